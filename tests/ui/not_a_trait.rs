#[zmesh::service]
struct Greeter;

fn main() {}
