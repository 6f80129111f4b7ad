use zmesh::{CallContext, HandlerError};

#[zmesh::service]
trait Greeter {
    async fn hello(&self, name: String, ctx: &CallContext) -> Result<String, HandlerError>;
}

fn main() {}
