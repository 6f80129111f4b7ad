use zmesh::HandlerError;

#[zmesh::service]
trait Greeter {
    async fn hello(name: String) -> Result<String, HandlerError>;
    async fn bye(&mut self) -> Result<(), HandlerError>;
}

fn main() {}
