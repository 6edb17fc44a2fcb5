//! Prints the api's OpenAPI document (`make generate` writes it to `docs/openapi.json`).

fn main() {
    print!("{}", workpool_api::openapi::document());
}
