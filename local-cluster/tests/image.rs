//! The image `make image` builds: it agrees with the Dockerfile's final stage, and a
//! private containerd (Debian's, from `make deps`) imports it and runs our binary as the
//! image's non-root user, with the pause image reaping and stopping at SIGTERM. The
//! containerd, its shims, mounts and cgroups are all gone when the test ends, failed or not.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use workpool_local_cluster::image::{
    self, Compression, IMAGE_BINARIES, IMAGE_REPOSITORY, PAUSE_REFERENCE, dockerfile_disagreements,
    parse_dockerfile,
};
use workpool_local_cluster::node::containerd;
use workpool_local_cluster::paths::{repo_root, workspace_binary};

fn dockerfile() -> String {
    std::fs::read_to_string(repo_root().join("Dockerfile")).expect("reading the Dockerfile")
}

#[test]
fn the_dockerfile_final_stage_and_the_image_builder_agree() {
    let stage = parse_dockerfile(&dockerfile()).expect("parsing the Dockerfile");
    let differences = dockerfile_disagreements(&stage);
    assert!(
        differences.is_empty(),
        "the Dockerfile and local-cluster/src/image.rs differ; change both together:\n{}",
        differences.join("\n")
    );
}

#[test]
fn a_dockerfile_that_differs_is_reported() {
    let original = dockerfile();
    let edits = [
        ("binaries", " target/release/workpool-smoke", ""),
        ("user", "USER 65532:65532", "USER 1000:1000"),
        ("exposed ports", "EXPOSE 8080 8090", "EXPOSE 8080"),
        (
            "cmd",
            r#"CMD ["workpool-operator"]"#,
            r#"CMD ["workpool-api"]"#,
        ),
        ("binary directory", "/out/ /usr/local/bin/", "/out/ /bin/"),
        ("base", "static-debian12:nonroot", "base-debian12:nonroot"),
        ("does not reproduce", "USER 65532", "ENV A=b\nUSER 65532"),
    ];
    for (what, from, to) in edits {
        assert!(
            original.contains(from),
            "the Dockerfile no longer has {from:?}"
        );
        let edited = original.replacen(from, to, 1);
        let differences = parse_dockerfile(&edited)
            .map(|stage| dockerfile_disagreements(&stage))
            .unwrap_or_else(|error| vec![error.to_string()]);
        assert!(
            differences.iter().any(|line| line.contains(what)),
            "changing {from:?} to {to:?} was not reported as a {what} difference: {differences:?}"
        );
    }
}

#[test]
fn ldd_output_gives_the_loader_and_the_libraries() {
    let output = "\tlinux-vdso.so.1 (0x00007ffd5b7e9000)\n\
        \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0c1c400000)\n\
        \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c1c000000)\n\
        \t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1c600000)\n";
    let paths = image::parse_ldd(output).expect("parsing");
    assert_eq!(
        paths,
        [
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2"
        ]
        .map(PathBuf::from)
    );
    assert!(image::parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
}

/// The test's own containerd: its root, state and sockets in a temporary directory, its
/// containers in a cgroup parent of their own. Dropping it (also on a failed assertion)
/// removes containers, stops containerd and its shims, and removes mounts and cgroups.
struct PrivateContainerd {
    dir: tempfile::TempDir,
    socket: PathBuf,
    cgroup_parent: String,
    daemon: Option<Child>,
}

impl PrivateContainerd {
    fn start() -> Self {
        containerd::check_installed().expect("containerd, ctr and runc");
        assert!(
            // /proc/self belongs to the process's effective user.
            std::fs::metadata("/proc/self").map(|meta| meta.uid()).ok() == Some(0),
            "containerd needs root to run containers"
        );
        // A short path: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("wpimg-")
            .tempdir_in("/tmp")
            .expect("temporary directory");
        let socket = containerd::socket_path(dir.path());
        let config = containerd::config(dir.path(), None);
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("writing containerd's config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log file");
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let cgroup_parent = format!("workpool-image-test-{}", std::process::id());
        let containerd = Self {
            dir,
            socket,
            cgroup_parent,
            daemon: Some(daemon),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if containerd.socket.exists()
                && containerd
                    .ctr(&["version"], Duration::from_secs(5))
                    .status
                    .success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 15 s; its log:\n{}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr(&self, arguments: &[&str], timeout: Duration) -> Output {
        containerd::ctr(&self.socket, arguments, timeout).expect("running ctr")
    }

    /// `ctr` that must succeed; its output.
    fn ctr_ok(&self, arguments: &[&str], timeout: Duration) -> String {
        let output = self.ctr(arguments, timeout);
        assert!(
            output.status.success(),
            "ctr {} failed ({}): {}{}\ncontainerd's log:\n{}",
            arguments.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn cgroup(&self, container: &str) -> String {
        format!("/{}/{container}", self.cgroup_parent)
    }

    /// Stops everything this containerd ran and then itself; what is left behind (none
    /// when all went well).
    fn shut_down(&mut self) -> Vec<String> {
        if self.daemon.is_none() {
            return Vec::new();
        }
        let quick = Duration::from_secs(10);
        let listed = self.ctr(&["containers", "list", "--quiet"], quick);
        for container in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            self.ctr(&["tasks", "kill", "--signal", "SIGKILL", container], quick);
            self.ctr(&["tasks", "delete", "--force", container], quick);
            self.ctr(&["containers", "delete", container], quick);
        }
        if let Some(mut daemon) = self.daemon.take() {
            let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        // Shims outlive containerd; ours name its socket on their command line.
        for pid in containerd::processes_mentioning(self.dir.path()) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        containerd::unmount_all_under(self.dir.path());
        containerd::remove_cgroup_tree(&self.cgroup_parent);
        std::thread::sleep(Duration::from_millis(200));
        let mut left = Vec::new();
        left.extend(
            containerd::processes_mentioning(self.dir.path())
                .into_iter()
                .map(|pid| format!("process {pid}")),
        );
        left.extend(
            containerd::mounts_under(self.dir.path())
                .into_iter()
                .map(|mount| format!("mount {}", mount.display())),
        );
        left.extend(
            containerd::cgroups_left(&self.cgroup_parent)
                .into_iter()
                .map(|parent| format!("cgroup {}", parent.display())),
        );
        left
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        let left = self.shut_down();
        if !left.is_empty() {
            eprintln!("image test: left behind: {left:?}");
        }
    }
}

#[test]
fn containerd_imports_the_image_and_runs_it_as_the_nonroot_user() {
    let started = Instant::now();
    let binaries = IMAGE_BINARIES.map(|name| workspace_binary(name).expect("binary"));
    let binary_dir = binaries[0]
        .parent()
        .expect("binary directory")
        .to_path_buf();
    let mut containerd = PrivateContainerd::start();
    let images = containerd.dir.path().join("images");
    let reference = format!("{IMAGE_REPOSITORY}:image-test");
    let workpool = image::workpool_image(&binary_dir, &reference).expect("image spec");
    // Debug binaries are large: uncompressed layers write and import faster.
    let workpool_archive = images.join("workpool.oci.tar");
    image::write_oci_archive(&workpool, &workpool_archive, Compression::None)
        .expect("writing the image");
    let pause = image::pause_image(
        Path::new(env!("CARGO_BIN_EXE_workpool-pause")),
        PAUSE_REFERENCE,
    )
    .expect("pause image spec");
    let pause_archive = images.join("pause.oci.tar");
    image::write_oci_archive(&pause, &pause_archive, Compression::Gzip)
        .expect("writing the pause image");

    let slow = Duration::from_secs(60);
    let quick = Duration::from_secs(10);
    for archive in [&workpool_archive, &pause_archive] {
        containerd.ctr_ok(&["images", "import", &archive.to_string_lossy()], slow);
    }
    let listed = containerd.ctr_ok(&["images", "list", "--quiet"], quick);
    for wanted in [reference.as_str(), PAUSE_REFERENCE] {
        assert!(
            listed.lines().any(|line| line == wanted),
            "{wanted} not among {listed}"
        );
    }

    // The image's own user: the runtime spec containerd makes from its config.
    containerd.ctr_ok(&["containers", "create", &reference, "user-check"], quick);
    let info: serde_json::Value =
        serde_json::from_str(&containerd.ctr_ok(&["containers", "info", "user-check"], quick))
            .expect("container info JSON");
    let user = &info["Spec"]["process"]["user"];
    assert_eq!(
        (user["uid"].as_u64(), user["gid"].as_u64()),
        (Some(65532), Some(65532))
    );
    containerd.ctr_ok(&["containers", "delete", "user-check"], quick);

    let help = containerd.ctr_ok(
        &[
            "run",
            "--rm",
            "--cgroup",
            &containerd.cgroup("smoke"),
            &reference,
            "smoke",
            "workpool-smoke",
            "--help",
        ],
        slow,
    );
    assert!(
        help.contains("Submit one work item"),
        "workpool-smoke --help in the container printed {help:?}"
    );

    // The pause process runs as its image's user and stops at SIGTERM.
    containerd.ctr_ok(
        &[
            "run",
            "--detach",
            "--cgroup",
            &containerd.cgroup("pause"),
            PAUSE_REFERENCE,
            "pause",
        ],
        quick,
    );
    let tasks = containerd.ctr_ok(&["tasks", "list"], quick);
    let pid = tasks
        .lines()
        .find_map(|line| {
            let mut columns = line.split_whitespace();
            (columns.next() == Some("pause")).then(|| columns.next()?.parse::<u32>().ok())?
        })
        .unwrap_or_else(|| panic!("no pause task in {tasks}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("pause status");
    let uid = status.lines().find(|line| line.starts_with("Uid:"));
    assert_eq!(
        uid.map(|line| line.split_whitespace().nth(1)),
        Some(Some("65535")),
        "{status}"
    );
    containerd.ctr_ok(&["tasks", "kill", "--signal", "SIGTERM", "pause"], quick);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tasks = containerd.ctr_ok(&["tasks", "list"], quick);
        if tasks
            .lines()
            .any(|line| line.starts_with("pause") && line.contains("STOPPED"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pause task did not stop at SIGTERM: {tasks}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let left = containerd.shut_down();
    assert!(left.is_empty(), "left behind: {left:?}");
    eprintln!("image test took {:.1?}", started.elapsed());
}
