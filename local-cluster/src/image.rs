//! The Workpool OCI image, built from this workspace's binaries without Docker or a
//! registry: an OCI image layout written as one tar that `ctr images import` accepts.
//! Also the tiny pause image a node's containerd needs for its pod sandboxes.
//!
//! The image mirrors the `Dockerfile`'s final stage (checked by [`dockerfile_disagreements`]):
//! the same binaries in the same directory, the same user, ports and command, on a base
//! layer with what the distroless `static:nonroot` base gives those binaries (the
//! `nonroot` user, `/tmp`, the CA bundle). Binaries that are dynamically linked (a glibc
//! build) get their loader and libraries, as `ldd` finds them, at the same paths, so the
//! image runs whichever way they were built.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::{Error, Result};

/// The binaries the image carries, as the Dockerfile's build stage copies them.
pub const IMAGE_BINARIES: [&str; 4] = [
    "workpool-operator",
    "workpool-api",
    "workpool-worker",
    "workpool-smoke",
];
/// Where the binaries go (on the image's `PATH`).
pub const IMAGE_BINARY_DIR: &str = "/usr/local/bin";
/// The distroless `nonroot` user and group.
pub const IMAGE_USER: &str = "65532:65532";
/// The api's port and the metrics port.
pub const IMAGE_EXPOSED_PORTS: [u16; 2] = [8080, 8090];
/// The default command; the chart and the operator pick the binary with `command`.
pub const IMAGE_CMD: [&str; 1] = ["workpool-operator"];
/// The base whose contents [`workpool_image`]'s base layer stands in for.
pub const DOCKERFILE_BASE: &str = "gcr.io/distroless/static-debian12:nonroot";
/// The chart's default image repository; the tag is the chart's appVersion.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/workpool/workpool";
/// The pause image's reference, for containerd's CRI `sandbox_image`.
pub const PAUSE_REFERENCE: &str = "localhost/workpool/pause:local";
/// The pause binary of this crate (`src/bin/workpool-pause.rs`).
pub const PAUSE_BINARY: &str = "workpool-pause";
/// The user of the upstream pause image: no one's uid.
const PAUSE_USER: &str = "65535:65535";
/// The home and working directory of the distroless `nonroot` user.
const NONROOT_HOME: &str = "/home/nonroot";
/// Where Debian (and the distroless base) keep the CA bundle.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// A fixed time for every file and the config, so the same binaries give the same digest.
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// What a file in the image is made of.
#[derive(Debug, Clone)]
pub enum EntryContent {
    Directory,
    /// A host file, read through symlinks (a library's symlink becomes the library).
    HostFile(PathBuf),
    Bytes(Vec<u8>),
}

/// One file or directory of the image's single layer.
#[derive(Debug, Clone)]
pub struct ImageEntry {
    /// Absolute path inside the image.
    pub path: String,
    pub content: EntryContent,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl ImageEntry {
    fn root_owned(path: &str, content: EntryContent, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            content,
            mode,
            uid: 0,
            gid: 0,
        }
    }
}

/// An image to write: its files and its runtime configuration.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The full reference containerd records, e.g. `ghcr.io/workpool/workpool:0.1.0`.
    pub reference: String,
    pub entries: Vec<ImageEntry>,
    pub user: String,
    pub exposed_ports: Vec<u16>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
}

/// How the layer is stored in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Smaller archive; what `make image` writes.
    Gzip,
    /// Faster to write and import (tests with large debug binaries).
    None,
}

/// What [`write_oci_archive`] wrote.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub reference: String,
    pub archive: PathBuf,
    pub archive_bytes: u64,
    /// `sha256:<hex>` of the manifest: the image's digest in containerd.
    pub manifest_digest: String,
}

/// The Workpool image from the binaries in `binary_dir` (all of [`IMAGE_BINARIES`]).
pub fn workpool_image(binary_dir: &Path, reference: &str) -> Result<ImageSpec> {
    image_of(binary_dir, reference, &IMAGE_BINARIES)
}

/// The test image's repository and tag: the Workpool image plus [`TEST_BINARIES`], for
/// test pools whose handler is one of them. Never pushed anywhere.
pub const TEST_IMAGE: (&str, &str) = ("localhost/workpool/workpool-test", "local");
/// What the test image adds: the test handlers (the chaos checker's, and one that shows
/// when it ran).
pub const TEST_BINARIES: [&str; 2] = ["workpool-ledger", "workpool-span"];

/// The test image ([`TEST_IMAGE`]) from the binaries in `binary_dir`.
pub fn test_image(binary_dir: &Path) -> Result<ImageSpec> {
    let (repository, tag) = TEST_IMAGE;
    let names: Vec<&str> = IMAGE_BINARIES.into_iter().chain(TEST_BINARIES).collect();
    image_of(binary_dir, &format!("{repository}:{tag}"), &names)
}

fn image_of(binary_dir: &Path, reference: &str, names: &[&str]) -> Result<ImageSpec> {
    let mut entries = distroless_like_base();
    let mut binaries = Vec::new();
    for name in names {
        let binary = binary_dir.join(name);
        if !binary.is_file() {
            return Err(Error::Missing(format!(
                "{} is missing: build the image's binaries first (make image does)",
                binary.display()
            )));
        }
        entries.push(ImageEntry::root_owned(
            &format!("{IMAGE_BINARY_DIR}/{name}"),
            EntryContent::HostFile(binary.clone()),
            0o755,
        ));
        binaries.push(binary);
    }
    entries.extend(runtime_libraries(&binaries)?);
    let mut env = vec![PATH_ENV.to_owned()];
    if Path::new(CA_BUNDLE).is_file() {
        env.push(format!("SSL_CERT_FILE={CA_BUNDLE}"));
    }
    Ok(ImageSpec {
        reference: reference.to_owned(),
        entries,
        user: IMAGE_USER.to_owned(),
        exposed_ports: IMAGE_EXPOSED_PORTS.to_vec(),
        env,
        entrypoint: Vec::new(),
        cmd: IMAGE_CMD.iter().map(|part| (*part).to_owned()).collect(),
        working_dir: Some(NONROOT_HOME.to_owned()),
    })
}

/// The pause image: `/pause` (the [`PAUSE_BINARY`] at `pause_binary`) and nothing else
/// but the libraries a dynamically linked build needs.
pub fn pause_image(pause_binary: &Path, reference: &str) -> Result<ImageSpec> {
    if !pause_binary.is_file() {
        return Err(Error::Missing(format!(
            "{} is missing: build {PAUSE_BINARY} first (make image does)",
            pause_binary.display()
        )));
    }
    let mut entries = vec![ImageEntry::root_owned(
        "/pause",
        EntryContent::HostFile(pause_binary.to_path_buf()),
        0o755,
    )];
    entries.extend(runtime_libraries(&[pause_binary.to_path_buf()])?);
    Ok(ImageSpec {
        reference: reference.to_owned(),
        entries,
        user: PAUSE_USER.to_owned(),
        exposed_ports: Vec::new(),
        env: vec![PATH_ENV.to_owned()],
        entrypoint: vec!["/pause".to_owned()],
        cmd: Vec::new(),
        working_dir: None,
    })
}

/// What distroless `static:nonroot` gives a static binary: the users, `/tmp`, the
/// nonroot home and (taken from this host, where Debian's `ca-certificates` has it) the
/// CA bundle.
fn distroless_like_base() -> Vec<ImageEntry> {
    let passwd = "root:x:0:0:root:/root:/sbin/nologin\n\
                  nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
                  nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
    let group = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n";
    let mut entries = vec![
        ImageEntry::root_owned(
            "/etc/passwd",
            EntryContent::Bytes(passwd.as_bytes().to_vec()),
            0o644,
        ),
        ImageEntry::root_owned(
            "/etc/group",
            EntryContent::Bytes(group.as_bytes().to_vec()),
            0o644,
        ),
        ImageEntry::root_owned("/tmp", EntryContent::Directory, 0o1777),
        ImageEntry {
            path: NONROOT_HOME.to_owned(),
            content: EntryContent::Directory,
            mode: 0o700,
            uid: 65532,
            gid: 65532,
        },
    ];
    if Path::new(CA_BUNDLE).is_file() {
        entries.push(ImageEntry::root_owned(
            CA_BUNDLE,
            EntryContent::HostFile(PathBuf::from(CA_BUNDLE)),
            0o644,
        ));
    }
    entries
}

/// The dynamic loader and shared libraries the binaries need, at the paths `ldd`
/// resolves (so the loader finds them in the image where it found them here). None for
/// static binaries.
pub fn runtime_libraries(binaries: &[PathBuf]) -> Result<Vec<ImageEntry>> {
    let mut libraries = BTreeMap::new();
    for binary in binaries {
        for library in shared_libraries(binary)? {
            libraries.entry(library.clone()).or_insert(library);
        }
    }
    libraries
        .into_values()
        .map(|library| {
            let path = library.to_str().ok_or_else(|| {
                Error::Other(format!("library path {} is not UTF-8", library.display()))
            })?;
            Ok(ImageEntry::root_owned(
                path,
                EntryContent::HostFile(library.clone()),
                0o755,
            ))
        })
        .collect()
}

/// The absolute library paths `ldd` lists for one binary; empty when it is static.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(Error::io("running ldd (Debian's libc-bin)"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // glibc's ldd says so (and fails) for static binaries, static-pie ones included.
    if stdout.contains("not a dynamic executable")
        || stderr.contains("not a dynamic executable")
        || stdout.contains("statically linked")
    {
        return Ok(Vec::new());
    }
    if !output.status.success() {
        return Err(Error::Other(format!(
            "ldd {} failed: {}",
            binary.display(),
            stderr.trim()
        )));
    }
    parse_ldd(&stdout)
}

/// Library paths from `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` and the
/// loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in output
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
    {
        if line.contains("not found") {
            return Err(Error::Missing(format!("ldd: {line}")));
        }
        let resolved = match line.split_once("=>") {
            Some((_, target)) => target.trim(),
            None => line,
        };
        if let Some(path) = resolved.split_whitespace().next()
            && path.starts_with('/')
        {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// Writes `spec` as an OCI image layout in one tar at `archive` (through a `.partial`
/// file, so a failed run leaves no half archive under the real name).
pub fn write_oci_archive(
    spec: &ImageSpec,
    archive: &Path,
    compression: Compression,
) -> Result<BuiltImage> {
    let parent = archive
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(Error::io(format!("creating {}", parent.display())))?;
    let layer_file = tempfile::NamedTempFile::new_in(parent).map_err(Error::io(format!(
        "creating a layer file in {}",
        parent.display()
    )))?;
    let layer = write_layer(spec, layer_file.as_file(), compression)?;

    let config = serde_json::to_vec(&image_config(spec, &layer.diff_id))
        .map_err(Error::context("encoding the image config"))?;
    let config_digest = sha256_digest(&config);
    let layer_media_type = match compression {
        Compression::Gzip => MEDIA_LAYER_GZIP,
        Compression::None => MEDIA_LAYER_TAR,
    };
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": layer_media_type, "digest": layer.digest, "size": layer.bytes}],
    }))
    .map_err(Error::context("encoding the manifest"))?;
    let manifest_digest = sha256_digest(&manifest);
    // containerd names the image from io.containerd.image.name as it is; other tools
    // read the OCI ref.name (the tag).
    let tag = spec
        .reference
        .rsplit_once(':')
        .map(|(_, tag)| tag)
        .filter(|tag| !tag.contains('/'))
        .unwrap_or("latest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": spec.reference,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .map_err(Error::context("encoding the index"))?;

    let partial = archive.with_extension("partial");
    let file =
        File::create(&partial).map_err(Error::io(format!("creating {}", partial.display())))?;
    let what = format!("writing {}", partial.display());
    let mut outer = tar::Builder::new(io::BufWriter::new(file));
    let blob = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    append_bytes(&mut outer, "blobs/", None, &what)?;
    append_bytes(&mut outer, "blobs/sha256/", None, &what)?;
    let mut layer_reader = layer_file
        .reopen()
        .map_err(Error::io("reopening the layer file"))?;
    let mut header = file_header(layer.bytes, 0o644, 0, 0);
    outer
        .append_data(&mut header, blob(&layer.digest), &mut layer_reader)
        .map_err(Error::io(what.clone()))?;
    append_bytes(&mut outer, &blob(&config_digest), Some(&config), &what)?;
    append_bytes(&mut outer, &blob(&manifest_digest), Some(&manifest), &what)?;
    append_bytes(&mut outer, "index.json", Some(&index), &what)?;
    append_bytes(
        &mut outer,
        "oci-layout",
        Some(br#"{"imageLayoutVersion":"1.0.0"}"#),
        &what,
    )?;
    let mut writer = outer.into_inner().map_err(Error::io(what.clone()))?;
    writer.flush().map_err(Error::io(what.clone()))?;
    drop(writer);
    std::fs::rename(&partial, archive).map_err(Error::io(format!(
        "renaming {} to {}",
        partial.display(),
        archive.display()
    )))?;
    let archive_bytes = std::fs::metadata(archive)
        .map_err(Error::io(format!("reading {}", archive.display())))?
        .len();
    Ok(BuiltImage {
        reference: spec.reference.clone(),
        archive: archive.to_path_buf(),
        archive_bytes,
        manifest_digest,
    })
}

fn image_config(spec: &ImageSpec, diff_id: &str) -> serde_json::Value {
    let exposed: serde_json::Map<String, serde_json::Value> = spec
        .exposed_ports
        .iter()
        .map(|port| (format!("{port}/tcp"), json!({})))
        .collect();
    let mut config = serde_json::Map::new();
    config.insert("User".into(), json!(spec.user));
    config.insert("Env".into(), json!(spec.env));
    if !exposed.is_empty() {
        config.insert("ExposedPorts".into(), serde_json::Value::Object(exposed));
    }
    if !spec.entrypoint.is_empty() {
        config.insert("Entrypoint".into(), json!(spec.entrypoint));
    }
    if !spec.cmd.is_empty() {
        config.insert("Cmd".into(), json!(spec.cmd));
    }
    if let Some(dir) = &spec.working_dir {
        config.insert("WorkingDir".into(), json!(dir));
    }
    json!({
        "created": EPOCH,
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": EPOCH, "created_by": "workpool-image (local-cluster/src/image.rs)"}],
    })
}

/// The layer's digests: of its stored bytes (the blob) and of its tar (the diff id).
struct LayerDigests {
    digest: String,
    diff_id: String,
    bytes: u64,
}

fn write_layer(spec: &ImageSpec, file: &File, compression: Compression) -> Result<LayerDigests> {
    let what = "writing the image layer";
    let stored = DigestingWriter::new(io::BufWriter::new(file));
    match compression {
        Compression::None => {
            let stored = write_layer_tar(spec, stored)?;
            let (digest, bytes, mut inner) = stored.finish();
            inner.flush().map_err(Error::io(what))?;
            Ok(LayerDigests {
                diff_id: digest.clone(),
                digest,
                bytes,
            })
        }
        Compression::Gzip => {
            let gzip = flate2::write::GzEncoder::new(stored, flate2::Compression::fast());
            let tar = write_layer_tar(spec, DigestingWriter::new(gzip))?;
            let (diff_id, _, gzip) = tar.finish();
            let stored = gzip.finish().map_err(Error::io(what))?;
            let (digest, bytes, mut inner) = stored.finish();
            inner.flush().map_err(Error::io(what))?;
            Ok(LayerDigests {
                digest,
                diff_id,
                bytes,
            })
        }
    }
}

/// The layer's tar: entries sorted by path, each parent directory before its children,
/// every time the epoch.
fn write_layer_tar<W: Write>(spec: &ImageSpec, writer: W) -> Result<W> {
    let what = "writing the image layer";
    let mut entries: BTreeMap<String, &ImageEntry> = BTreeMap::new();
    for entry in &spec.entries {
        let relative = entry.path.trim_start_matches('/').trim_end_matches('/');
        if relative.is_empty() || relative.split('/').any(|part| part == "..") {
            return Err(Error::Other(format!(
                "image path {:?} is not a file below /",
                entry.path
            )));
        }
        entries.insert(relative.to_owned(), entry);
    }
    let mut parents = std::collections::BTreeSet::new();
    for path in entries.keys() {
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|dir| !dir.as_os_str().is_empty()) {
            if let Some(dir) = dir.to_str()
                && !entries.contains_key(dir)
            {
                parents.insert(dir.to_owned());
            }
            parent = dir.parent();
        }
    }
    let default_dir = ImageEntry::root_owned("", EntryContent::Directory, 0o755);
    let mut all: BTreeMap<String, &ImageEntry> = entries;
    for dir in parents {
        all.insert(dir, &default_dir);
    }
    let mut builder = tar::Builder::new(writer);
    for (path, entry) in &all {
        match &entry.content {
            EntryContent::Directory => {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                set_owner_and_mode(&mut header, entry);
                builder
                    .append_data(&mut header, format!("{path}/"), io::empty())
                    .map_err(Error::io(what))?;
            }
            EntryContent::Bytes(bytes) => {
                let mut header = file_header(bytes.len() as u64, entry.mode, entry.uid, entry.gid);
                builder
                    .append_data(&mut header, path, bytes.as_slice())
                    .map_err(Error::io(what))?;
            }
            EntryContent::HostFile(source) => {
                let file = File::open(source)
                    .map_err(Error::io(format!("opening {}", source.display())))?;
                let size = file
                    .metadata()
                    .map_err(Error::io(format!("reading {}", source.display())))?
                    .len();
                let mut header = file_header(size, entry.mode, entry.uid, entry.gid);
                builder
                    .append_data(&mut header, path, file)
                    .map_err(Error::io(format!("adding {}", source.display())))?;
            }
        }
    }
    builder.into_inner().map_err(Error::io(what))
}

fn set_owner_and_mode(header: &mut tar::Header, entry: &ImageEntry) {
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(0);
}

fn file_header(size: u64, mode: u32, uid: u64, gid: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(uid);
    header.set_gid(gid);
    header.set_mtime(0);
    header
}

/// A directory (`bytes` None) or a small file in the outer archive.
fn append_bytes<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    bytes: Option<&[u8]>,
    what: &str,
) -> Result<()> {
    let mut header = match bytes {
        Some(bytes) => file_header(bytes.len() as u64, 0o644, 0, 0),
        None => {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            header.set_mode(0o755);
            header.set_mtime(0);
            header
        }
    };
    builder
        .append_data(&mut header, path, bytes.unwrap_or_default())
        .map_err(Error::io(what))
}

fn sha256_digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex_lower(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    )
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Hashes and counts what passes through, for a blob's digest and size in one pass.
struct DigestingWriter<W> {
    inner: W,
    hasher: ring::digest::Context,
    bytes: u64,
}

impl<W: Write> DigestingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            bytes: 0,
        }
    }

    fn finish(self) -> (String, u64, W) {
        let digest = format!("sha256:{}", hex_lower(self.hasher.finish().as_ref()));
        (digest, self.bytes, self.inner)
    }
}

impl<W: Write> Write for DigestingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The final stage of a Dockerfile, as far as the image builder mirrors it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerfileFinalStage {
    pub base: String,
    /// Binary names, in the order the build stage copies them.
    pub binaries: Vec<String>,
    /// Where COPY puts them (without a trailing slash).
    pub binary_dir: String,
    pub user: Option<String>,
    pub exposed_ports: Vec<u16>,
    pub cmd: Option<Vec<String>>,
    /// Instructions of the final stage this builder does not reproduce.
    pub unknown_instructions: Vec<String>,
}

/// Parses the parts of a Dockerfile's final stage the image mirrors; the binaries come
/// from the `cp ... <dir>/` of the stage that the final COPY takes `<dir>` from.
pub fn parse_dockerfile(text: &str) -> Result<DockerfileFinalStage> {
    let instructions = dockerfile_instructions(text);
    let stage_starts: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, (keyword, _))| keyword == "FROM")
        .map(|(index, _)| index)
        .collect();
    let Some(&final_start) = stage_starts.last() else {
        return Err(Error::Other("the Dockerfile has no FROM".into()));
    };
    let mut stage = DockerfileFinalStage {
        base: instructions[final_start].1.clone(),
        ..Default::default()
    };
    for (keyword, arguments) in &instructions[final_start + 1..] {
        match keyword.as_str() {
            "COPY" => {
                let words: Vec<&str> = arguments.split_whitespace().collect();
                let from = words
                    .iter()
                    .find_map(|word| word.strip_prefix("--from="))
                    .map(str::to_owned);
                let paths: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|word| !word.starts_with("--"))
                    .collect();
                let (Some(from), Some((destination, sources))) = (from, paths.split_last()) else {
                    stage.unknown_instructions.push(format!("COPY {arguments}"));
                    continue;
                };
                stage.binary_dir = destination.trim_end_matches('/').to_owned();
                for source in sources {
                    if source.ends_with('/') {
                        stage
                            .binaries
                            .extend(copied_into(&instructions, &from, source)?);
                    } else if let Some(name) = source.rsplit('/').next() {
                        stage.binaries.push(name.to_owned());
                    }
                }
            }
            "USER" => stage.user = Some(arguments.trim().to_owned()),
            "EXPOSE" => {
                for port in arguments.split_whitespace() {
                    let number = port.strip_suffix("/tcp").unwrap_or(port);
                    match number.parse() {
                        Ok(number) => stage.exposed_ports.push(number),
                        Err(_) => stage.unknown_instructions.push(format!("EXPOSE {port}")),
                    }
                }
            }
            "CMD" => match serde_json::from_str::<Vec<String>>(arguments.trim()) {
                Ok(cmd) => stage.cmd = Some(cmd),
                Err(_) => stage
                    .unknown_instructions
                    .push(format!("CMD {arguments} (not the JSON form)")),
            },
            _ => stage
                .unknown_instructions
                .push(format!("{keyword} {arguments}")),
        }
    }
    Ok(stage)
}

/// The basenames a stage's `cp a b ... <dir>` commands put into `<dir>`.
fn copied_into(
    instructions: &[(String, String)],
    stage_name: &str,
    directory: &str,
) -> Result<Vec<String>> {
    let mut in_stage = false;
    let mut names = Vec::new();
    for (keyword, arguments) in instructions {
        if keyword == "FROM" {
            let words: Vec<&str> = arguments.split_whitespace().collect();
            in_stage = matches!(words.as_slice(), [_, as_word, name]
                if as_word.eq_ignore_ascii_case("as") && *name == stage_name);
            continue;
        }
        if !in_stage || keyword != "RUN" {
            continue;
        }
        for command in arguments.split("&&").map(str::trim) {
            let words: Vec<&str> = command.split_whitespace().collect();
            if let Some((&"cp", rest)) = words.split_first()
                && let Some((target, sources)) = rest.split_last()
                && target.trim_end_matches('/') == directory.trim_end_matches('/')
            {
                names.extend(
                    sources
                        .iter()
                        .filter(|word| !word.starts_with('-'))
                        .filter_map(|source| source.rsplit('/').next())
                        .map(str::to_owned),
                );
            }
        }
    }
    if names.is_empty() {
        return Err(Error::Other(format!(
            "no `cp ... {directory}` in the Dockerfile's stage {stage_name:?}"
        )));
    }
    Ok(names)
}

/// (KEYWORD, arguments) per instruction: comments dropped, `\` continuations joined.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(continued) => {
                current.push_str(continued);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let instruction = std::mem::take(&mut current);
                let (keyword, arguments) = instruction
                    .split_once(char::is_whitespace)
                    .unwrap_or((instruction.as_str(), ""));
                if !keyword.is_empty() {
                    instructions.push((keyword.to_ascii_uppercase(), arguments.trim().to_owned()));
                }
            }
        }
    }
    instructions
}

/// Where a Dockerfile's final stage and [`workpool_image`] differ, one line each; empty
/// when they agree.
pub fn dockerfile_disagreements(stage: &DockerfileFinalStage) -> Vec<String> {
    let mut differences = Vec::new();
    let mut expect = |what: &str, dockerfile: String, builder: String| {
        if dockerfile != builder {
            differences.push(format!(
                "{what}: the Dockerfile has {dockerfile}, the image builder {builder}"
            ));
        }
    };
    expect("base", stage.base.clone(), DOCKERFILE_BASE.to_owned());
    let mut dockerfile_binaries = stage.binaries.clone();
    dockerfile_binaries.sort();
    let mut builder_binaries = IMAGE_BINARIES.map(str::to_owned).to_vec();
    builder_binaries.sort();
    expect(
        "binaries",
        dockerfile_binaries.join(" "),
        builder_binaries.join(" "),
    );
    expect(
        "binary directory",
        stage.binary_dir.clone(),
        IMAGE_BINARY_DIR.to_owned(),
    );
    expect(
        "user",
        stage.user.clone().unwrap_or_else(|| "no USER".into()),
        IMAGE_USER.to_owned(),
    );
    expect(
        "exposed ports",
        format!("{:?}", stage.exposed_ports),
        format!("{:?}", IMAGE_EXPOSED_PORTS),
    );
    expect(
        "cmd",
        stage
            .cmd
            .as_ref()
            .map_or_else(|| "no CMD".into(), |cmd| format!("{cmd:?}")),
        format!("{IMAGE_CMD:?}"),
    );
    for instruction in &stage.unknown_instructions {
        differences.push(format!(
            "the Dockerfile's final stage has `{instruction}`, which the image builder does not reproduce"
        ));
    }
    differences
}
