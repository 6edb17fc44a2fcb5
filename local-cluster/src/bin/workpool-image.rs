//! `make image`: writes the Workpool image and the node's pause image as OCI image
//! layout tars (for `ctr -n k8s.io images import`), from binaries already built, without
//! Docker or a registry. See `workpool_local_cluster::image`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use workpool_local_cluster::image::{
    self, BuiltImage, Compression, IMAGE_REPOSITORY, PAUSE_BINARY, PAUSE_REFERENCE,
};

#[derive(Parser)]
#[command(about = "Write the Workpool OCI image and the pause image as OCI layout tars")]
struct Args {
    /// Directory holding workpool-operator, workpool-api, workpool-worker and workpool-smoke
    #[arg(long)]
    binaries: PathBuf,
    /// The pause binary [default: workpool-pause in the --binaries directory]
    #[arg(long)]
    pause: Option<PathBuf>,
    /// Where the two archives go
    #[arg(long, default_value = "target/image")]
    out_dir: PathBuf,
    /// The Workpool image's tag; the chart's default is its appVersion
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    tag: String,
    /// Store the layers uncompressed (faster, larger)
    #[arg(long)]
    uncompressed: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(images) => {
            for built in images {
                println!(
                    "{} {} ({:.1} MiB, {})",
                    built.reference,
                    built.archive.display(),
                    built.archive_bytes as f64 / (1024.0 * 1024.0),
                    built.manifest_digest
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("workpool-image: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> workpool_local_cluster::Result<Vec<BuiltImage>> {
    let compression = if args.uncompressed {
        Compression::None
    } else {
        Compression::Gzip
    };
    let reference = format!("{IMAGE_REPOSITORY}:{}", args.tag);
    let workpool = image::workpool_image(&args.binaries, &reference)?;
    let pause_binary = args
        .pause
        .clone()
        .unwrap_or_else(|| args.binaries.join(PAUSE_BINARY));
    let pause = image::pause_image(&pause_binary, PAUSE_REFERENCE)?;
    Ok(vec![
        image::write_oci_archive(
            &workpool,
            &args.out_dir.join("workpool.oci.tar"),
            compression,
        )?,
        image::write_oci_archive(&pause, &args.out_dir.join("pause.oci.tar"), compression)?,
    ])
}
