//! The image commands as users and scripts run them: output, exit codes, one-line errors,
//! and images left intact by every failure.

mod common;

use common::OPERATOR_KEY;
use common::oracle;
use common::{cached_fixture, fixture};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::imagegen;

fn ok(args: &[&str]) -> String {
    let out = imagegen(args);
    assert!(
        out.status.success(),
        "imagegen {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Fails with exactly one line on stderr that starts with "error:" and mentions `needle`.
fn fails(args: &[&str], needle: &str) -> String {
    let out = imagegen(args);
    let err = common::without_stage_lines(&String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "imagegen {args:?} succeeded");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "expected one error line, got: {err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    err
}

fn t(img: &Path, path: &str) -> String {
    format!("{}:{path}", img.display())
}

fn root_start(img: &Path, n: u32) -> u64 {
    oracle::partition(img, n).start
}

#[test]
fn inspect_matches_the_real_tools() {
    for layout in common::LAYOUTS {
        let img = cached_fixture(layout);
        let v: serde_json::Value =
            serde_json::from_str(&ok(&["inspect", "--json", img.to_str().unwrap()])).unwrap();
        let parts = oracle::partitions(&img);
        let ours = v["partitions"].as_array().unwrap();
        assert_eq!(ours.len(), parts.len(), "{layout}");
        for p in &parts {
            let o = ours
                .iter()
                .find(|o| o["number"] == p.number)
                .unwrap_or_else(|| panic!("{layout}: p{} missing", p.number));
            assert_eq!(o["start"], p.start * 512, "{layout} p{}", p.number);
            assert_eq!(o["size"], p.size * 512, "{layout} p{}", p.number);
            let blk = oracle::blkid(&img, p.start);
            if let Some(label) = blk.get("LABEL") {
                assert_eq!(
                    o["filesystem"]["label"],
                    label.as_str(),
                    "{layout} p{}",
                    p.number
                );
            }
            if let Some(uuid) = blk.get("UUID") {
                let ours = o["filesystem"]["uuid"].as_str().unwrap();
                assert!(
                    ours.eq_ignore_ascii_case(uuid),
                    "{layout} p{}: {ours} vs {uuid}",
                    p.number
                );
            }
        }
        assert!(v["os"]["ID"].is_string(), "{layout}: no OS detected");
        // The human table works too.
        assert!(ok(&["inspect", img.to_str().unwrap()]).contains("OS: "));
    }
}

#[test]
fn ls_and_cat_through_the_mount_view() {
    let img = cached_fixture("rpios-trixie");
    let names = ok(&["ls", &t(&img, "/boot/firmware")]);
    assert!(names.lines().any(|l| l == "cmdline.txt"), "{names}");
    let cmdline = ok(&["cat", &t(&img, "/boot/firmware/cmdline.txt")]);
    assert_eq!(
        cmdline,
        oracle::fat_cat(&img, oracle::partition(&img, 1).start, "/cmdline.txt")
    );
    let long = ok(&["ls", "-l", &t(&img, "/etc")]);
    assert!(
        long.lines()
            .any(|l| l.starts_with('l') && l.ends_with(" os-release")),
        "{long}"
    );
    fails(
        &["cat", &t(&img, "/etc/nope")],
        "/etc/nope: no such file or directory",
    );
    fails(&["cat", &t(&img, "/etc")], "is a directory");
}

#[test]
fn editing_commands() {
    let img = fixture("ubuntu-raspi");
    let start = root_start(&img, 2);
    let host = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(host.path(), b"key material\n").unwrap();
    let hp = host.path().to_str().unwrap();

    ok(&[
        "mkdir",
        "-p",
        "--mode",
        "0750",
        "--owner",
        "1000:1000",
        &t(&img, "/srv/a/b"),
    ]);
    ok(&[
        "cp",
        hp,
        &t(&img, "/srv/a/b/k"),
        "--mode",
        "0600",
        "--owner",
        "1000:1000",
    ]);
    ok(&["ln", "-s", "b/k", &t(&img, "/srv/a/link")]);
    fails(
        &["ln", "-s", "b/k", &t(&img, "/srv/a/link")],
        "already exists",
    );
    ok(&["ln", "-sf", "b", &t(&img, "/srv/a/link")]);
    ok(&["cp", hp, &t(&img, "/boot/firmware/user-data")]);
    ok(&["rm", &t(&img, "/etc/fixture-100.conf")]);
    fails(&["rm", &t(&img, "/srv")], "not empty");
    fails(&["mkdir", &t(&img, "/x/y")], "no such file or directory");

    oracle::assert_e2fsck_clean(&img, start);
    let p1 = oracle::partition(&img, 1);
    oracle::assert_fsck_fat_clean(&img, p1.start, p1.size);
    assert_eq!(
        oracle::ext4_cat(&img, start, "/srv/a/b/k"),
        "key material\n"
    );
    let st = oracle::debugfs(&img, start, "stat /srv/a/b/k");
    assert!(
        st.contains("Mode:  0600") && st.contains("User:  1000   Group:  1000"),
        "{st}"
    );
    let st = oracle::debugfs(&img, start, "stat /srv/a");
    assert!(st.contains("Mode:  0750"), "{st}");
    let st = oracle::debugfs(&img, start, "stat /srv/a/link");
    assert!(st.contains("Fast link dest: \"b\""), "{st}");
    assert_eq!(
        oracle::fat_cat(&img, p1.start, "/user-data"),
        "key material\n"
    );
    // cat follows the symlink we made.
    assert_eq!(ok(&["cat", &t(&img, "/srv/a/link/k")]), "key material\n");
}

#[test]
fn grow_every_table_kind() {
    for (layout, last) in [
        ("rpios-bookworm", 2),
        ("armbian-bpim5", 1),
        ("ubuntu-cloud-amd64", 1),
    ] {
        let img = fixture(layout);
        let before = oracle::partition(&img, last);
        let blocks = |img: &Path, start| {
            oracle::dumpe2fs(img, start)["Block count"]
                .parse::<u64>()
                .unwrap()
        };
        let old_blocks = blocks(&img, before.start);
        let old_len = std::fs::metadata(&img).unwrap().len();
        ok(&["grow", img.to_str().unwrap(), "--size", "+256M"]);
        assert_eq!(
            std::fs::metadata(&img).unwrap().len(),
            old_len + (256 << 20),
            "{layout}"
        );
        let after = oracle::partition(&img, last);
        assert_eq!(after.start, before.start, "{layout}");
        assert!(after.size > before.size, "{layout}");
        oracle::assert_e2fsck_clean(&img, after.start);
        assert!(
            blocks(&img, after.start) > old_blocks,
            "{layout}: filesystem did not grow"
        );
        if layout == "ubuntu-cloud-amd64" {
            let v = oracle::run("sgdisk", &["-v", img.to_str().unwrap()]);
            assert!(v.contains("No problems found"), "{v}");
        }
        // Everything before the grown partition is untouched.
        let n = (before.start * 512) as usize;
        let orig = std::fs::read(cached_fixture(layout)).unwrap();
        let now = std::fs::read(&img).unwrap();
        let table = if layout == "ubuntu-cloud-amd64" {
            34 * 512
        } else {
            512
        };
        assert!(
            orig[table..n] == now[table..n],
            "{layout}: bytes before p{last} changed"
        );
        assert!(orig[..446] == now[..446], "{layout}: boot code changed");
        fails(
            &["grow", img.to_str().unwrap(), "--size", "1M"],
            "not larger",
        );
    }
}

#[test]
fn bad_input_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = dir.path().join("zeros.img");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    fails(&["inspect", zeros.to_str().unwrap()], "no partition table");
    fails(&["ls", &t(&zeros, "/")], "no partition table");
    fails(&["inspect", "/nonexistent.img"], "No such file");
    fails(&["cat", "/nonexistent.img:/etc/hostname"], "no such image");

    // Truncated in the middle of the root partition.
    let img = fixture("debian-genericcloud");
    let len = std::fs::metadata(&img).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(len - (64 << 20)).unwrap();
    drop(f);
    fails(&["inspect", img.to_str().unwrap()], "truncated");
}

#[test]
fn failures_leave_the_image_as_it_was() {
    let img = fixture("rpios-bookworm");
    let start = root_start(&img, 2);
    let original = std::fs::read(&img).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Larger than the free space of the ~256 MiB root filesystem (sparse on the host).
    let big = dir.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(400 << 20)
        .unwrap();
    fails(
        &["cp", big.to_str().unwrap(), &t(&img, "/big")],
        "no space left",
    );
    fails(
        &["cp", big.to_str().unwrap(), &t(&img, "/nodir/big")],
        "no such file or directory",
    );
    assert!(
        std::fs::read(&img).unwrap() == original,
        "a failed edit changed the image"
    );
    oracle::assert_e2fsck_clean(&img, start);

    // A filesystem that was not cleanly unmounted: refuse, change nothing.
    let spec = oracle::ext4_at(&img, start);
    oracle::run("debugfs", &["-w", "-R", "feature needs_recovery", &spec]);
    let dirty = std::fs::read(&img).unwrap();
    let small = dir.path().join("small");
    std::fs::write(&small, b"x").unwrap();
    fails(
        &["cp", small.to_str().unwrap(), &t(&img, "/etc/x")],
        "recovery",
    );
    assert!(
        std::fs::read(&img).unwrap() == dirty,
        "refused edit changed the image"
    );
}

/// Several `imagegen cp` into one image at once take turns: every file lands, and both
/// filesystems stay clean.
#[test]
fn concurrent_edits_of_one_image_take_turns() {
    let img = fixture("rpios-bookworm");
    let root = root_start(&img, 2);
    let boot = oracle::partition(&img, 1);
    let dir = tempfile::tempdir().unwrap();
    let target = |round: usize, i: usize| {
        if i.is_multiple_of(2) {
            format!("/etc/concurrent-{round}-{i}")
        } else {
            format!("/boot/firmware/conc-{round}-{i}.txt")
        }
    };
    let content = |round: usize, i: usize| format!("file {round}-{i}\n").repeat(300 * (i + 1));
    for round in 0..3 {
        let children: Vec<_> = (0..6)
            .map(|i| {
                let host = dir.path().join(format!("f{round}-{i}"));
                std::fs::write(&host, content(round, i)).unwrap();
                Command::new(env!("CARGO_BIN_EXE_imagegen"))
                    .args(["cp", host.to_str().unwrap(), &t(&img, &target(round, i))])
                    .env("SOURCE_DATE_EPOCH", "1750000000")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (i, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}, cp {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        oracle::assert_e2fsck_clean(&img, root);
        oracle::assert_fsck_fat_clean(&img, boot.start, boot.size);
        for i in 0..6usize {
            let found = if i.is_multiple_of(2) {
                oracle::ext4_cat(&img, root, &target(round, i))
            } else {
                let name = target(round, i);
                oracle::fat_cat(
                    &img,
                    boot.start,
                    name.strip_prefix("/boot/firmware").unwrap(),
                )
            };
            assert!(
                found == content(round, i),
                "round {round}: {} differs",
                target(round, i)
            );
        }
    }
}

/// An image whose name starts with '-' is a file to every tool imagegen runs, never an
/// option.
#[test]
fn an_image_named_like_an_option_is_a_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("-d")).unwrap();
    let host = dir.path().join("host");
    std::fs::write(&host, b"dash\n").unwrap();
    let h = host.to_str().unwrap();
    for name in ["-dash.img", "-d/disk.img"] {
        let src = cached_fixture("rpios-bookworm");
        let img = dir.path().join(name);
        oracle::run(
            "cp",
            &[
                "--sparse=always",
                src.to_str().unwrap(),
                img.to_str().unwrap(),
            ],
        );
        let run = |args: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_imagegen"))
                .args(args)
                .current_dir(dir.path())
                .env("SOURCE_DATE_EPOCH", "1750000000")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "imagegen {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let at = |p: &str| format!("{name}:{p}");
        run(&["cp", "--", h, &at("/etc/dash")]);
        run(&["mkdir", "--", &at("/srv/dash")]);
        run(&["ln", "-s", "--", "dash", &at("/etc/dash-link")]);
        run(&["rm", "--", &at("/srv/dash")]);
        run(&["cp", "--", h, &at("/boot/firmware/dash.txt")]);
        assert_eq!(run(&["cat", "--", &at("/etc/dash-link")]), "dash\n");
        run(&["grow", "--size", "+8M", "--", name]);
        let start = root_start(&img, 2);
        oracle::assert_e2fsck_clean(&img, start);
        assert_eq!(oracle::ext4_cat(&img, start, "/etc/dash"), "dash\n");
    }
}

/// Control characters in a path inside the image are refused with a clear error: debugfs
/// ends a script line at '\r', so such a name would run a different command than planned.
#[test]
fn control_characters_in_image_paths_are_refused() {
    let img = fixture("rpios-bookworm");
    let original = std::fs::read(&img).unwrap();
    let host = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(host.path(), b"x\n").unwrap();
    let hp = host.path().to_str().unwrap();
    for path in [
        "/etc/a\rb",
        "/etc/a\x1b[31mb",
        "/boot/firmware/a\tb",
        "/etc/a\u{85}b",
    ] {
        fails(&["cp", hp, &t(&img, path)], "control character");
        fails(&["mkdir", &t(&img, path)], "control character");
        fails(&["ln", "-s", "x", &t(&img, path)], "control character");
    }
    fails(
        &["ln", "-s", "x\ry", &t(&img, "/etc/link")],
        "control character",
    );
    assert!(
        std::fs::read(&img).unwrap() == original,
        "a refused edit changed the image"
    );
}

/// A size no disk can have is one clear error, not "0 bytes" or a panic, and changes nothing.
#[test]
fn grow_to_an_impossible_size_is_one_clear_line() {
    let img = fixture("rpios-bookworm");
    let original = std::fs::read(&img).unwrap();
    let i = img.to_str().unwrap();
    fails(&["grow", i, "--size", "18446744073709551615"], "too large");
    fails(&["grow", i, "--size", "+18446744073709551000"], "too large");
    assert!(
        std::fs::read(&img).unwrap() == original,
        "a refused grow changed the image"
    );
}

/// Names and labels from an image are shown with their control characters escaped (like
/// GNU `ls -b`), so a crafted image cannot drive the terminal of whoever lists it.
#[test]
fn listings_escape_control_characters_from_the_image() {
    let img = fixture("rpios-bookworm");
    let start = root_start(&img, 2);
    let host = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        host.path(),
        b"PRETTY_NAME=\"Evil\x1b]0;owned\x07OS\"\nID=debian\n",
    )
    .unwrap();
    let spec = oracle::ext4_at(&img, start);
    for name in [
        "/etc/a\rb",
        "/etc/c\x1b[31md",
        "/etc/back\\slash",
        "/etc/del\x7f",
    ] {
        oracle::run(
            "debugfs",
            &[
                "-w",
                "-R",
                &format!("write {} \"{name}\"", host.path().display()),
                &spec,
            ],
        );
    }
    let short = ok(&["ls", &t(&img, "/etc")]);
    let long = ok(&["ls", "-l", &t(&img, "/etc")]);
    for out in [&short, &long] {
        let raw: Vec<&str> = out
            .lines()
            .filter(|l| l.contains(['\r', '\x1b', '\x7f']))
            .collect();
        assert!(raw.is_empty(), "raw control characters: {raw:?}");
        for escaped in ["a\\rb", "c\\033[31md", "back\\\\slash", "del\\177"] {
            assert!(
                out.lines().any(|l| l.ends_with(escaped)),
                "{escaped} not in {out:?}"
            );
        }
    }
    oracle::run("debugfs", &["-w", "-R", "rm /etc/os-release", &spec]);
    oracle::run(
        "debugfs",
        &[
            "-w",
            "-R",
            &format!("write {} /etc/os-release", host.path().display()),
            &spec,
        ],
    );
    let table = ok(&["inspect", img.to_str().unwrap()]);
    assert!(
        !table.contains(['\x1b', '\x07']),
        "raw control characters: {table:?}"
    );
    assert!(table.contains("OS: Evil\\033]0;owned\\aOS"), "{table}");
    // Errors quote what a symlink in the image points to.
    oracle::run(
        "debugfs",
        &["-w", "-R", "symlink /etc/evil-link \"\x1b[2J\"", &spec],
    );
    let err = fails(&["cat", &t(&img, "/etc/evil-link")], "no such file");
    assert!(!err.contains('\x1b'), "raw control characters: {err:?}");
    assert!(err.contains("/etc/\\033[2J"), "{err}");
}

/// `imagegen inspect IMAGE | head`: when the reader of standard output goes away, imagegen
/// stops without a word, as a tool killed by SIGPIPE does, and with its status (128 + 13).
#[test]
fn a_reader_that_stops_reading_ends_the_output_quietly() {
    let img = cached_fixture("rpios-trixie");
    let img = img.to_str().unwrap();
    let etc = format!("{img}:/etc");
    let os_release = format!("{img}:/usr/lib/os-release");
    let commands: [&[&str]; 6] = [
        &["inspect", img],
        &["inspect", "--json", img],
        &["ls", &etc],
        &["ls", "-l", &etc],
        &["cat", &os_release],
        &["boards"],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        // The reader is gone before imagegen writes anything.
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_imagegen"))
            .args(args)
            .stdout(writer)
            .output()
            .expect("run imagegen");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err, "", "imagegen {args:?}");
        assert_eq!(out.status.code(), Some(141), "imagegen {args:?}");
    }
    // Other failures still say what went wrong.
    fails(&["cat", &format!("{img}:/etc/nope")], "no such file");
}

/// `[cluster] timezone`, `locale` and `keymap`: the example's values pass `check` without a
/// word, and a malformed one is refused with the file, its line and what is wrong.
#[test]
fn check_validates_timezone_locale_and_keymap() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_with_secrets(dir.path());
    let config = config.as_str();
    let example = std::fs::read_to_string(config).unwrap();
    let all = example
        .replace("# timezone = ", "timezone = ")
        .replace("# locale = ", "locale = ")
        .replace("# keymap = ", "keymap = ");
    assert_eq!(all.matches("\n# timezone = ").count(), 0);
    assert!(
        all.contains("\nkeymap = \"de\"\n"),
        "the example shows keymap"
    );
    std::fs::write(config, &all).unwrap();
    let out = imagegen(&["check", "--config", config]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("timezone") && !err.contains("locale") && !err.contains("keymap"),
        "{err}"
    );
    let line_of = |needle: &str| all.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    for (key, bad, says) in [
        ("timezone", "../../etc/shadow", "tzdata zone name"),
        ("locale", "english", "language[_TERRITORY]"),
        ("keymap", "DE", "XKB layout"),
    ] {
        let text = all.replace(
            &format!("{key} = \""),
            &format!("{key} = \"{bad}\" # was \""),
        );
        std::fs::write(config, &text).unwrap();
        let err = fails(&["check", "--config", config], says);
        let want = format!("{config}:{}:", line_of(&format!("{key} = ")));
        assert!(err.contains(&want), "{want} in {err}");
        assert!(err.contains(&format!("cluster {key} {bad:?}")), "{err}");
    }
}

/// A node named `pi-` would become an invalid hostname and k3s node name: check refuses it in
/// one line naming the node and the rule (the agent shares the rule, imagegen_firstboot::names).
#[test]
fn check_refuses_a_node_name_that_is_no_hostname() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_with_secrets(dir.path());
    let config = config.as_str();
    ok(&["check", "--config", config]);
    let example = std::fs::read_to_string(config).unwrap();
    let bad = example.replace("name = \"pi4-a\"", "name = \"pi-\"");
    assert_ne!(bad, example, "the example has a node pi4-a");
    std::fs::write(config, bad).unwrap();
    let err = fails(
        &["check", "--config", config],
        "node name \"pi-\" is not valid",
    );
    assert!(err.contains("not starting or ending with '-'"), "{err}");
    assert!(err.contains("RFC 1123"), "{err}");
}

/// `imagegen init`, then the operator's key in place of the placeholder.
fn init_with_key(config: &str) {
    ok(&["init", config]);
    common::set_operator_key(Path::new(config));
}

/// `init`'s example in `dir`, with the operator's key and the secret files it names (0600):
/// a config `check` passes.
fn example_with_secrets(dir: &Path) -> String {
    let config = dir.join("cluster.toml");
    let config = config.to_str().unwrap();
    init_with_key(config);
    std::fs::create_dir(dir.join("secrets")).unwrap();
    for f in ["k3s-token", "nut-password"] {
        let p = dir.join("secrets").join(f);
        std::fs::write(&p, "x\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    config.to_owned()
}

/// Every lock-out problem at once, each with the file and line, and a non-zero exit.
#[test]
fn check_reports_every_lock_out_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    let config = config.to_str().unwrap();
    let write = |admin_keys: &str, k3s: &str, schedule: &str| {
        std::fs::write(
            config,
            format!(
                "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\n\
                 ssh_authorized_keys = [{admin_keys}]\n{k3s}\
                 [backup]\ntarget = \"ssh://b@nas/srv\"\nschedule = \"{schedule}\"\n\
                 [[nodes]]\nname = \"m\"\nboard = \"x86-64\"\nrole = \"server\"\n"
            ),
        )
        .unwrap();
    };
    // Lines: 5 keys, 7 token_file (with [k3s] on 6), 11 schedule.
    let token = dir.path().join("token");
    std::fs::write(&token, "hunter2\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let k3s = format!(
        "[k3s]\ntoken_file = {:?}\nserver_url = \"https://k.lan:6443\"\n",
        token.to_str().unwrap()
    );
    let placeholder = format!("\"ssh-ed25519 {} x\"", imagegen::config::PLACEHOLDER_KEY);
    let cut = format!("\"{}\"", &OPERATOR_KEY[..40]);
    write(&format!("{placeholder}, {cut}"), &k3s, "dialy");
    let out = imagegen(&["check", "--config", config]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    for (line, needle) in [
        (5, "placeholder key"),
        (5, "not a valid OpenSSH public key"),
        (11, "backup schedule \"dialy\""),
        (7, "is not a k3s token: it has no K10<ca-hash>:: prefix"),
    ] {
        common::error_at(&err, config, line, needle);
    }
    assert!(
        err.contains(&format!("chmod 600 {}", token.display())),
        "{err}"
    );
    assert!(err.lines().last().unwrap().contains("4 problems"), "{err}");

    // An empty key list; an agent-only cluster naming no server.
    std::fs::write(
        config,
        "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\nssh_authorized_keys = []\n\
         [k3s]\n[[nodes]]\nname = \"a\"\nboard = \"rpi4\"\nrole = \"agent\"\n",
    )
    .unwrap();
    let out = imagegen(&["check", "--config", config]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("error: {config}:5:")), "{err}");
    assert!(err.contains("ssh_authorized_keys is empty"), "{err}");
    assert!(err.contains("no node has role = \"server\""), "{err}");

    // Two servers: a warning, not an error.
    let two = format!(
        "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\nssh_authorized_keys = [\"{OPERATOR_KEY}\"]\n\
         [k3s]\nserver_url = \"https://10.0.0.1:6443\"\n\
         [[nodes]]\nname = \"a\"\nboard = \"x86-64\"\nrole = \"server\"\n\
         [[nodes]]\nname = \"b\"\nboard = \"x86-64\"\nrole = \"server\"\n"
    );
    std::fs::write(config, two).unwrap();
    let out = imagegen(&["check", "--config", config]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning: two servers"), "{err}");
}

/// Three servers, one known by a host name only: check warns in one line that etcd stays open
/// to every node; with every address an IP, it says nothing about etcd.
#[test]
fn check_warns_when_etcd_cannot_be_kept_between_servers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    let config = config.to_str().unwrap();
    let three = |c_address: &str| {
        format!(
            "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\nssh_authorized_keys = [\"{OPERATOR_KEY}\"]\n\
             [k3s]\n\
             [[nodes]]\nname = \"a\"\nboard = \"x86-64\"\nrole = \"server\"\naddress = \"10.0.0.1\"\n\
             [[nodes]]\nname = \"b\"\nboard = \"x86-64\"\nrole = \"server\"\naddress = \"fd00::2\"\n\
             [[nodes]]\nname = \"c\"\nboard = \"x86-64\"\nrole = \"server\"\naddress = \"{c_address}\"\n"
        )
    };
    std::fs::write(config, three("c.lan")).unwrap();
    let out = imagegen(&["check", "--config", config]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    let etcd: Vec<&str> = err.lines().filter(|l| l.contains("etcd")).collect();
    assert_eq!(etcd.len(), 1, "{err}");
    assert!(
        etcd[0]
            .starts_with("warning: etcd (2379-2380) on the servers is open to every cluster node")
            && etcd[0].contains("server(s) c "),
        "{err}"
    );
    std::fs::write(config, three("10.0.0.3")).unwrap();
    let out = imagegen(&["check", "--config", config]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("etcd"), "{err}");
}

/// `[addons]`: an unknown add-on, a values file that is not there and a chart that is not a
/// gzip archive are each refused, with the line.
#[test]
fn check_refuses_bad_addons() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    let config = config.to_str().unwrap();
    let head = format!(
        "[cluster]\nname = \"lab\"\n[admin]\nuser = \"ops\"\nssh_authorized_keys = [\"{OPERATOR_KEY}\"]\n\
         [k3s]\nserver_url = \"https://10.0.0.1:6443\"\n"
    );
    let nodes = "[[nodes]]\nname = \"m\"\nboard = \"x86-64\"\nrole = \"server\"\n";
    std::fs::write(config, format!("{head}[addons]\nlogging = {{}}\n{nodes}")).unwrap();
    let out = imagegen(&["check", "--config", config]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{config}:9:")), "{err}");
    assert!(err.contains("logging"), "{err}");

    std::fs::write(dir.path().join("chart.tgz"), "not a tarball\n").unwrap();
    std::fs::write(
        config,
        format!(
            "{head}[addons.monitoring]\nvalues = \"missing.yaml\"\n\
             [addons.dashboard]\nchart = \"chart.tgz\"\n{nodes}"
        ),
    )
    .unwrap();
    let out = imagegen(&["check", "--config", config]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    for (line, needle) in [
        (9, "addons.monitoring values"),
        (11, "addons.dashboard chart"),
    ] {
        common::error_at(&err, config, line, needle);
    }
    assert!(err.contains("is not a gzip file"), "{err}");

    // The same files, fixed: no add-on error.
    std::fs::write(dir.path().join("missing.yaml"), "a: 1\n").unwrap();
    let chart = dir.path().join("chart.tgz");
    let gz = oracle::output("gzip", &["-c", chart.to_str().unwrap()]).stdout;
    std::fs::write(dir.path().join("chart.tgz"), gz).unwrap();
    let out = imagegen(&["check", "--config", config]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
}

/// `[network]`: check refuses a bad CIDR, a gateway outside the subnet, a country that is not
/// two uppercase letters, a cluster-wide static address and a psk file of the wrong length, each
/// at its file:line.
#[test]
fn check_refuses_bad_network_settings() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    let config = config.to_str().unwrap();
    init_with_key(config);
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    for (f, text) in [
        ("k3s-token", "x\n"),
        ("nut-password", "x\n"),
        ("wifi-psk", "short\n"),
    ] {
        let p = dir.path().join("secrets").join(f);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let example = std::fs::read_to_string(config).unwrap();
    let text = format!(
        "{}\n[network]\naddress = \"10.0.0.1/24\"\ngateway = \"192.168.1.1\"\n\
         dns = [\"1.1.1.1\", \"dns.example\"]\n\
         wifi = {{ ssid = \"lab\", psk_file = \"secrets/wifi-psk\", country = \"de\" }}\n",
        example.replace(
            "name = \"pi4-a\"\n",
            "name = \"pi4-a\"\nnetwork = { address = \"192.168.1.300/24\" }\n"
        )
    );
    std::fs::write(config, &text).unwrap();
    let out = imagegen(&["check", "--config", config]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "{err}");
    let line = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    for (at, says) in [
        (
            "network = { address",
            "\"192.168.1.300/24\" is not an IPv4 address",
        ),
        ("address = \"10.0.0.1/24\"", "is one node's"),
        ("gateway = ", "outside the subnet"),
        ("dns = ", "\"dns.example\" is not an IP address"),
        ("wifi = ", "two uppercase letters"),
        ("wifi = ", "8 to 63 characters"),
    ] {
        common::error_at(&err, config, line(at), says);
    }
}

/// Names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `inspect`, `ls` and `cat` read a `.img.zst` (compressed by zstd) and a multi-block
/// `.img.xz` (by xz) exactly as the raw image, leave the compressed file as it was and no
/// scratch copy behind.
#[test]
fn the_reading_commands_read_compressed_images_as_the_raw_one() {
    let raw = cached_fixture("rpios-bookworm");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let zst = dir.path().join("a.img.zst");
    let xz = dir.path().join("a.img.xz");
    let raw_s = raw.to_str().unwrap();
    oracle::run("zstd", &["-q", "-T2", raw_s, "-o", zst.to_str().unwrap()]);
    oracle::run(
        "sh",
        &[
            "-c",
            "xz -T2 --block-size=16MiB -c \"$1\" > \"$2\"",
            "_",
            raw_s,
            xz.to_str().unwrap(),
        ],
    );
    let sums = || oracle::run("sha256sum", &[zst.to_str().unwrap(), xz.to_str().unwrap()]);
    let before = sums();
    let inspect = |img: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_str(&ok(&["inspect", "--json", img.to_str().unwrap()])).unwrap();
        // The one field that names the file given.
        assert_eq!(v["image"], img.to_str().unwrap());
        v["image"] = serde_json::Value::Null;
        v
    };
    for img in [&zst, &xz] {
        for args in [
            vec!["ls".to_string(), t(img, "/")],
            vec!["ls".to_string(), "-l".to_string(), t(img, "/etc")],
            // Across the mount view, onto the FAT partition.
            vec!["ls".to_string(), "-l".to_string(), t(img, "/boot/firmware")],
            vec!["cat".to_string(), t(img, "/etc/os-release")],
            vec!["cat".to_string(), t(img, "/boot/firmware/cmdline.txt")],
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let raw_args: Vec<String> = args
                .iter()
                .map(|a| a.replace(img.to_str().unwrap(), raw_s))
                .collect();
            let raw_args: Vec<&str> = raw_args.iter().map(String::as_str).collect();
            let got = ok(&args);
            assert!(!got.is_empty(), "{args:?}");
            assert_eq!(got, ok(&raw_args), "{args:?}");
        }
        assert_eq!(inspect(img), inspect(&raw));
        // An error inside the image is still one line, and still the image's own error
        // (--quiet: a slow decompression would print its stage line).
        fails(&["--quiet", "cat", &t(img, "/etc/nope")], "/etc/nope");
    }
    assert_eq!(sums(), before, "a compressed image was changed");
    assert_eq!(names_in(dir.path()), ["a.img.xz", "a.img.zst"]);
    // A damaged one is refused in one line, with nothing left behind.
    let cut = dir.path().join("cut.img.zst");
    let bytes = std::fs::read(&zst).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    fails(&["ls", &t(&cut, "/")], "cut.img.zst");
    assert_eq!(
        names_in(dir.path()),
        ["a.img.xz", "a.img.zst", "cut.img.zst"]
    );
}

/// Interrupted while decompressing (SIGTERM; a shell running the tests in the background
/// makes its children ignore SIGINT), `ls` leaves no scratch copy behind.
#[test]
fn an_interrupted_read_of_a_compressed_image_leaves_no_scratch_copy() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let img = dir.path().join("big.img.zst");
    // Incompressible data: decoding it writes every byte, which takes long enough to interrupt.
    oracle::run(
        "sh",
        &[
            "-c",
            "head -c 512M /dev/urandom | zstd -q -1 -o \"$1\"",
            "_",
            img.to_str().unwrap(),
        ],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_imagegen"))
        .args(["ls", &t(&img, "/")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !names_in(dir.path())
        .iter()
        .any(|n| n.starts_with(".imagegen-read-"))
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ls ended before it could be interrupted"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no scratch copy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    oracle::run("kill", &["-s", "TERM", &child.id().to_string()]);
    let status = child.wait().unwrap();
    assert!(!status.success(), "{status}");
    assert_eq!(names_in(dir.path()), ["big.img.zst"]);
}

/// `[[files]]`, `[firstboot]` and `[packages]` from the example pass `check` once their sources
/// exist; a missing source, a bad dest, mode or owner, a bad script name, a file that is not a
/// package and a bad package name are refused at their line.
#[test]
fn check_validates_own_files_and_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let config = example_with_secrets(dir.path());
    let config = config.as_str();
    for f in [
        "files/motd",
        "files/bpi-a.conf",
        "scripts/setup.sh",
        "scripts/set up.sh",
    ] {
        let p = dir.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "x\n").unwrap();
    }
    let example = std::fs::read_to_string(config).unwrap();
    let mut all = String::new();
    let mut on = false;
    for line in example.lines() {
        if line.starts_with("# [[files]]")
            || line.starts_with("# [firstboot]")
            || line.starts_with("# [packages]")
        {
            on = true;
        }
        if on && line.starts_with("# and one node") {
            all.push_str(line);
            all.push('\n');
            continue;
        }
        if on && line.starts_with("# ") && !line.starts_with("# Scripts") {
            all.push_str(&line[2..]);
        } else {
            on = on && line.starts_with("# ");
            all.push_str(line);
        }
        all.push('\n');
    }
    assert!(
        all.contains("\n[[nodes.files]]\n")
            && all.contains("\n[firstboot]\n")
            && all.contains("\n[packages]\n"),
        "{all}"
    );
    // The example's package, made real: an "all" package suits every board.
    let deb = oracle::dpkg_deb_build(dir.path(), "mytool", "1.0", "all", "xz");
    std::fs::create_dir(dir.path().join("packages")).unwrap();
    std::fs::rename(&deb, dir.path().join("packages/mytool_1.0_all.deb")).unwrap();
    std::fs::write(dir.path().join("packages/notes.deb"), "not a package\n").unwrap();
    std::fs::write(config, &all).unwrap();
    let out = imagegen(&["check", "--config", config]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line_of =
        |text: &str, needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    for (from, to, key, says) in [
        (
            "source = \"files/motd\"",
            "source = \"files/nope\"",
            "source = ",
            "files/nope",
        ),
        (
            "dest = \"/etc/motd\"",
            "dest = \"etc/motd\"",
            "dest = \"etc",
            "absolute",
        ),
        (
            "dest = \"/etc/motd\"",
            "dest = \"/etc/../shadow\"",
            "dest = \"/etc/..",
            "\"..\"",
        ),
        (
            "dest = \"/etc/motd\"",
            "dest = \"/proc/motd\"",
            "dest = \"/proc",
            "/proc",
        ),
        (
            "mode = \"0644\"",
            "mode = \"rw-r--r--\"",
            "mode = ",
            "octal",
        ),
        (
            "owner = \"root:root\"",
            "owner = \"Root:\"",
            "owner = ",
            "USER:GROUP",
        ),
        (
            "scripts = [\"scripts/setup.sh\"]",
            "scripts = [\"scripts/set up.sh\"]",
            "scripts = ",
            "file name",
        ),
        (
            "scripts = [\"scripts/setup.sh\"]",
            "scripts = [\"scripts/gone.sh\"]",
            "scripts = ",
            "gone.sh",
        ),
        (
            "timeout_secs = 120",
            "timeout_secs = 9000",
            "timeout_secs = ",
            "240",
        ),
        (
            "debs = [\"packages/mytool_1.0_all.deb\"]",
            "debs = [\"packages/notes.deb\"]",
            "debs = ",
            "is not a Debian package",
        ),
        (
            "apt = [\"htop\",",
            "apt = [\"htop/bookworm\",",
            "apt = ",
            "is not a Debian package name",
        ),
    ] {
        let text = all.replacen(from, to, 1);
        assert_ne!(text, all, "{from}");
        std::fs::write(config, &text).unwrap();
        let err = fails(&["check", "--config", config], says);
        let want = format!("{config}:{}:", line_of(&text, key));
        assert!(err.contains(&want), "{to}: {want} in {err}");
    }
}
