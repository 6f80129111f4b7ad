use zmesh::HandlerError;

#[zmesh::service]
trait Store<T> {
    async fn get<K>(&self, key: K) -> Result<String, HandlerError>;
}

fn main() {}
