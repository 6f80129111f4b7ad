use zmesh::HandlerError;

#[zmesh::service(name = "a.b")]
trait Greeter {
    async fn hello(&self) -> Result<String, HandlerError>;
}

#[zmesh::service(prefix = "x")]
trait Other {
    async fn hello(&self) -> Result<String, HandlerError>;
}

fn main() {}
