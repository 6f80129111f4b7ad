use zmesh::HandlerError;

#[zmesh::service]
trait Counter {
    #[zmesh(stream)]
    async fn count(&self, n: u64) -> Result<Vec<u64>, HandlerError>;
    #[zmesh(streaming)]
    async fn other(&self) -> Result<(), HandlerError>;
}

fn main() {}
