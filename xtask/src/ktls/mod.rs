//! `cargo xtask ktls`: whether Debian's stock kernel takes a rustls session over into kTLS,
//! and whether `switchyard --ktls require` relays terminated routes through it, checked
//! for real on a kernel that has it (issue 13, item 6).
//!
//! This machine's kernel has no `CONFIG_TLS`; Debian's (`linux-image-amd64`, 6.1, with
//! `CONFIG_TLS=m`) does. The task downloads that kernel package into `target/ktls/`,
//! builds the `switchyard` binary, and makes an initramfs of busybox, the kernel's `tls`
//! and crypto modules, this very xtask binary, `switchyard` and `openssl` with their
//! shared libraries, and a throwaway P-256 certificate. It boots that with
//! `qemu-system-x86_64` (software emulation unless `--kvm`), where `/init` runs
//! `xtask ktls --inside` and powers off: first the `ktls` crate's hand-over on its own
//! ([`inside`]), then the proxy with real clients ([`proxy`]). The serial console is
//! printed and checked for the check's closing line. Not part of `cargo xtask test` (a
//! kernel download of about 70 MB and a boot under emulation); speed under emulation says
//! nothing, so this is a correctness check only.

mod inside;
mod proxy;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// The Debian packages the task needs on the host.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "openssl",
];
/// The closing line of a passing check inside the guest.
const PASSED: &str = "ktls-check: all passed";

#[derive(clap::Args)]
pub struct Options {
    /// Run the check itself (inside the guest); without it, build and boot the guest.
    #[arg(long, hide = true)]
    inside: bool,
    /// Use KVM instead of software emulation (when nested virtualisation works here).
    #[arg(long)]
    kvm: bool,
}

impl Options {
    /// Whether this is the run inside the guest.
    pub fn inside(&self) -> bool {
        self.inside
    }
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    if opts.inside {
        return inside::run(Path::new("/pki"));
    }
    crate::setup::apt_packages(PACKAGES)?;
    let dir = root.join("target").join("ktls");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let (vmlinuz, modules) = kernel(&dir)?;
    let switchyard = build_switchyard(root)?;
    let initrd = initramfs(&dir, &modules, &switchyard)?;
    boot(&vmlinuz, &initrd, opts.kvm)
}

/// Downloads and unpacks Debian's kernel package (once), with its module index built.
/// Returns the kernel image and the modules directory.
fn kernel(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let unpacked = dir.join("kernel");
    if !unpacked.join("boot").exists() {
        let depends = output(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
        let package = depends
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("linux-image-"))
            .context("apt-cache names no linux-image package for linux-image-amd64")?
            .to_owned();
        eprintln!("xtask: downloading {package}");
        output(
            Command::new("apt-get")
                .args(["download", &package])
                .current_dir(dir),
        )?;
        let deb = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with("_amd64.deb"))
            .context("apt-get download left no .deb")?;
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    let modules_root = unpacked.join("lib/modules");
    let version = fs::read_dir(&modules_root)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("the kernel package has no modules")?;
    let vmlinuz = unpacked.join("boot").join(format!("vmlinuz-{version}"));
    let config = fs::read_to_string(unpacked.join("boot").join(format!("config-{version}")))?;
    if !config
        .lines()
        .any(|l| l == "CONFIG_TLS=m" || l == "CONFIG_TLS=y")
    {
        bail!("kernel {version} has no CONFIG_TLS");
    }
    let modules = modules_root.join(&version);
    if !modules.join("modules.dep").exists() {
        output(
            Command::new("depmod")
                .arg("-b")
                .arg(&unpacked)
                .arg(&version),
        )?;
    }
    Ok((vmlinuz, modules))
}

/// Builds the `switchyard` binary the guest runs: release, as the bench runs it, so the
/// guest's comparison of kTLS and userspace TLS is not one of debug code.
fn build_switchyard(root: &Path) -> Result<PathBuf> {
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "proxy-user",
            "--bin",
            "switchyard",
        ])
        .current_dir(root)
        .status()
        .context("spawn cargo build")?;
    if !status.success() {
        bail!("cargo build of switchyard failed: {status}");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join("switchyard"))
}

/// The guest's initramfs: busybox, the TLS and crypto modules, this binary, `switchyard`
/// and `openssl` with their libraries, a certificate, and `/init`.
fn initramfs(dir: &Path, modules: &Path, switchyard: &Path) -> Result<PathBuf> {
    let tree = dir.join("initramfs");
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    for d in ["bin", "proc", "sys", "dev", "tmp", "pki", "etc"] {
        fs::create_dir_all(tree.join(d))?;
    }
    fs::copy("/bin/busybox", tree.join("bin/busybox")).context("copy busybox")?;
    for applet in [
        "sh", "mount", "modprobe", "ip", "cat", "poweroff", "uname", "timeout",
    ] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))?;
    }
    // The modules the check can need (tls and the AEADs), with the index modprobe reads.
    let version = modules.file_name().context("modules directory")?;
    let guest_modules = tree.join("lib/modules").join(version);
    for sub in [
        "kernel/net/tls",
        "kernel/crypto",
        "kernel/arch/x86/crypto",
        "kernel/lib",
    ] {
        copy_tree(&modules.join(sub), &guest_modules.join(sub))?;
    }
    for entry in fs::read_dir(modules)? {
        let path = entry?.path();
        if path.is_file() {
            fs::copy(&path, guest_modules.join(path.file_name().context("name")?))?;
        }
    }
    // This binary, the proxy and openssl, and what they link to, at the same paths.
    let me = std::env::current_exe().context("current_exe")?;
    let openssl =
        PathBuf::from(output(Command::new("sh").args(["-c", "command -v openssl"]))?.trim());
    for (binary, name) in [
        (me.as_path(), "xtask"),
        (switchyard, "switchyard"),
        (&openssl, "openssl"),
    ] {
        fs::copy(binary, tree.join("bin").join(name))
            .with_context(|| format!("copy {}", binary.display()))?;
        for lib in shared_libraries(binary)? {
            let to = tree.join(lib.strip_prefix("/").context("relative library path")?);
            fs::create_dir_all(to.parent().context("library directory")?)?;
            fs::copy(&lib, &to).with_context(|| format!("copy {}", lib.display()))?;
        }
    }
    certificate(&tree.join("pki"))?;
    // The dev agent dials `localhost`.
    fs::create_dir_all(tree.join("etc"))?;
    fs::write(
        tree.join("etc/hosts"),
        "127.0.0.1 localhost\n::1 localhost\n",
    )?;
    let init = tree.join("init");
    fs::write(
        &init,
        "#!/bin/sh\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         ip link set lo up\n\
         echo \"guest: kernel $(uname -r)\"\n\
         echo /bin/modprobe > /proc/sys/kernel/modprobe\n\
         modprobe tls || echo 'guest: modprobe tls failed'\n\
         for m in gcm aesni_intel chacha20poly1305; do modprobe $m || echo \"guest: no $m\"; done\n\
         echo \"guest: tcp_available_ulp: $(cat /proc/sys/net/ipv4/tcp_available_ulp)\"\n\
         /bin/xtask ktls --inside\n\
         poweroff -f\n",
    )?;
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    fs::set_permissions(&init, executable)?;
    let image = dir.join("initramfs.cpio");
    let list = Command::new("find")
        .arg(".")
        .current_dir(&tree)
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn find")?;
    let cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&tree)
        .stdin(list.stdout.context("find stdout")?)
        .stdout(fs::File::create(&image)?)
        .status()
        .context("spawn cpio")?;
    if !cpio.success() {
        bail!("cpio failed: {cpio}");
    }
    Ok(image)
}

/// Boots the guest and checks that the check inside passed.
fn boot(vmlinuz: &Path, initrd: &Path, kvm: bool) -> Result<()> {
    let accel = if kvm { "kvm" } else { "tcg" };
    let cpu = if kvm { "host" } else { "max" };
    eprintln!("xtask: booting {} under qemu ({accel})", vmlinuz.display());
    let out = Command::new("timeout")
        .args(["600", "qemu-system-x86_64", "-accel", accel, "-cpu", cpu])
        .args(["-m", "1024", "-smp", "2", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .output()
        .context("spawn qemu-system-x86_64")?;
    let console = String::from_utf8_lossy(&out.stdout);
    let log = initrd.with_file_name("console.log");
    fs::write(&log, console.as_bytes()).with_context(|| format!("write {}", log.display()))?;
    // The guest's own lines; the first may follow the firmware's terminal escapes.
    let lines: Vec<&str> = console
        .lines()
        .filter_map(|l| {
            let at = l.find("guest:").or_else(|| l.find("ktls-check:"))?;
            Some(&l[at..])
        })
        .collect();
    for line in &lines {
        println!("{line}");
    }
    if !lines.contains(&PASSED) {
        bail!(
            "the kTLS check in the guest did not pass (qemu: {}); its console is in {}",
            out.status,
            log.display()
        );
    }
    Ok(())
}

/// The libraries `ldd` says `binary` loads, the dynamic loader included.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let ldd = output(Command::new("ldd").arg(binary))?;
    Ok(ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// A throwaway self-signed P-256 certificate for `localhost`: `cert.pem`, `key.pem`.
fn certificate(dir: &Path) -> Result<()> {
    output(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
            ])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-keyout", "key.pem", "-out", "cert.pem"])
            .current_dir(dir),
    )?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if !from.exists() {
        return Ok(());
    }
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let path = entry?.path();
        let target = to.join(path.file_name().context("name")?);
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            fs::copy(&path, &target).with_context(|| format!("copy {}", path.display()))?;
        }
    }
    Ok(())
}

/// Runs `command` (its output shown only if it fails); returns its stdout.
fn output(command: &mut Command) -> Result<String> {
    let out = crate::setup::quiet(command)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
