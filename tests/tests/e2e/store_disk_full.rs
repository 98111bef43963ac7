//! Disk-full test on a real, small file system: a tmpfs mounted in a private user + mount namespace
//! (`unshare -rm`, no root needed), so appends hit a real ENOSPC. Every step runs the real `freshet` binary in
//! one shell inside that namespace (the tmpfs lives as long as the namespace), writing what it saw to files
//! outside it; the test then checks: appends fail with a clear error, the acknowledged records are intact and
//! nothing torn is readable, and appends work again once space returns.

use std::collections::BTreeSet;
use std::process::Command;

use freshet_tests::freshet_bin;

const SCRIPT: &str = r#"
set -u
mnt="$1"; out="$2"; freshet="$3"
mount -t tmpfs -o size=8m tmpfs "$mnt" || exit 90
d="$mnt/data"
"$freshet" streams --log warn --data-dir "$d" create full --shards 1 >"$out/create.txt" 2>&1 || exit 91
# Fill the file system, then give back about 1.5 MiB.
dd if=/dev/zero of="$mnt/filler" bs=64k 2>/dev/null
truncate -s -1536k "$mnt/filler"
line=$(printf 'x%.0s' $(seq 1 1000))
seq 1 3000 | sed "s/^/first-/; s/$/-$line/" | "$freshet" streams --log warn --data-dir "$d" put full --stdin >"$out/acked1.txt" 2>"$out/err1.txt"
echo $? >"$out/rc1.txt"
"$freshet" streams --log warn --data-dir "$d" get full 0 >"$out/get1.txt" 2>&1
echo $? >"$out/rc_get1.txt"
rm "$mnt/filler"
seq 1 200 | sed "s/^/second-/" | "$freshet" streams --log warn --data-dir "$d" put full --stdin >"$out/acked2.txt" 2>"$out/err2.txt"
echo $? >"$out/rc2.txt"
"$freshet" streams --log warn --data-dir "$d" get full 0 >"$out/get2.txt" 2>&1
echo $? >"$out/rc_get2.txt"
"#;

fn read(out: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Sequence numbers of `<line>\t<shard>\t<seq>` acknowledgement lines.
fn acked_seqs(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            l.split('\t')
                .nth(2)
                .expect("ack line has a sequence number")
                .to_string()
        })
        .collect()
}

/// (sequence number, data) of the JSON lines `streams get` prints.
fn stored(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            (
                v["sequence_number"].as_str().unwrap().to_string(),
                v["data"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn appends_fail_cleanly_when_the_disk_is_full_and_work_again_after() {
    let dir = tempfile::tempdir().unwrap();
    let (mnt, out) = (dir.path().join("mnt"), dir.path().join("out"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new("unshare")
        .args(["-rm", "sh", "-c", SCRIPT, "sh"])
        .arg(&mnt)
        .arg(&out)
        .arg(freshet_bin())
        .status()
        .expect("unshare (util-linux) runs");
    assert!(
        status.success(),
        "namespace script failed with {status:?} (90: mount, 91: create)"
    );

    // The put ran into the full disk: a non-zero exit and an error that says so.
    assert_ne!(
        read(&out, "rc1.txt").trim(),
        "0",
        "put should fail on a full disk"
    );
    let err = read(&out, "err1.txt");
    assert!(
        err.contains("no space left on device"),
        "error names the cause: {err}"
    );
    let acked1 = acked_seqs(&read(&out, "acked1.txt"));
    assert!(
        !acked1.is_empty() && acked1.len() < 3000,
        "some but not all acknowledged: {}",
        acked1.len()
    );

    // Reading still works on the full disk and returns exactly the acknowledged records, whole.
    assert_eq!(
        read(&out, "rc_get1.txt").trim(),
        "0",
        "{}",
        read(&out, "get1.txt")
    );
    let get1 = stored(&read(&out, "get1.txt"));
    assert_eq!(get1.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(), acked1);
    let line = "x".repeat(1000);
    for (i, (_, data)) in get1.iter().enumerate() {
        assert_eq!(data, &format!("first-{}-{line}", i + 1), "record {i} intact");
    }

    // With space back, appends work and land after the first ones.
    assert_eq!(read(&out, "rc2.txt").trim(), "0", "{}", read(&out, "err2.txt"));
    let acked2 = acked_seqs(&read(&out, "acked2.txt"));
    assert_eq!(acked2.len(), 200);
    let get2 = stored(&read(&out, "get2.txt"));
    let expected: Vec<String> = acked1.iter().chain(&acked2).cloned().collect();
    assert_eq!(get2.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(), expected);
    assert_eq!(
        get2.iter().map(|(s, _)| s).collect::<BTreeSet<_>>().len(),
        expected.len(),
        "no duplicates"
    );
    assert_eq!(get2.last().unwrap().1, "second-200");
}
