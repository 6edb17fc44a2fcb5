//! Prints the WorkPool CustomResourceDefinition as YAML (`make generate` writes it to
//! `crds/workpool.dev_workpools.yaml`).

fn main() -> std::process::ExitCode {
    match workpool_operator::crd_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("crdgen: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
