use zmesh::HandlerError;

#[zmesh::service]
trait Greeter {
    fn hello(&self, name: String) -> Result<String, HandlerError>;
}

fn main() {}
