use zmesh::HandlerError;

#[zmesh::service]
trait Greeter {
    async fn hello(&self, ctx: &mut zmesh::CallContext, name: String) -> Result<String, HandlerError>;
}

fn main() {}
