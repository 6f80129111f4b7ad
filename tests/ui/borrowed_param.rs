use zmesh::HandlerError;

#[zmesh::service]
trait Greeter {
    async fn hello(&self, name: &str) -> Result<String, HandlerError>;
}

fn main() {}
