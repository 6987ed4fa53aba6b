use super::*;
use crate::scratch::scratch;

fn fingerprint(seed: u64) -> Fingerprint {
    let cfg = Config {
        seed,
        ..Config::default()
    };
    Fingerprint::new(&cfg, &[1, 2, 3], &[4, 5]).unwrap()
}

fn loaded(found: Found) -> Loaded {
    match found {
        Found::State(l) => l,
        Found::None => panic!("no state"),
        Found::Damaged(why) => panic!("damaged: {why}"),
    }
}

#[test]
fn a_state_reads_back_exactly() {
    let dir = scratch("roundtrip");
    let path = dir.join("cell-5.state");
    let fp = fingerprint(1);
    let a: Vec<f32> = (0..1000).map(|i| (i as f32).sin() * 1e-3).collect();
    let b = vec![f32::MIN_POSITIVE, -0.0, 1.5];
    let meta = serde_json::json!({"stage": "phase1", "x": 0.1f64 + 0.2, "big": u64::MAX});
    let bytes = write(&path, &fp, meta.clone(), &[("a", &a), ("b", &b)]).unwrap();
    assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
    let mut l = loaded(read(&path, &fp).unwrap());
    assert_eq!(l.meta, meta, "floats and u64 survive the JSON exactly");
    assert_eq!(l.take("a", 1000).unwrap(), a);
    let err = l.take("b", 4).unwrap_err().to_string();
    assert_eq!(err, "state array \"b\" has 3 values, expected 4");
    assert_eq!(l.threads, crate::ops::threads());
}

#[test]
fn any_damaged_byte_is_caught_and_the_state_removed() {
    let dir = scratch("damaged");
    let path = dir.join("cell-5.state");
    let fp = fingerprint(1);
    let a: Vec<f32> = (0..300).map(|i| i as f32).collect();
    write(&path, &fp, serde_json::json!({"k": 1}), &[("a", &a)]).unwrap();
    let good = std::fs::read(&path).unwrap();
    // one flipped bit in the magic, the header, an array and the checksum;
    // and a truncated file
    for at in [3, 40, good.len() - 100, good.len() - 2] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        match read(&path, &fp).unwrap() {
            Found::Damaged(_) => {}
            _ => panic!("a flipped bit at byte {at} was not caught"),
        }
        assert!(!path.exists(), "the damaged state is removed");
    }
    std::fs::write(&path, &good[..good.len() - 9]).unwrap();
    let Found::Damaged(why) = read(&path, &fp).unwrap() else {
        panic!("a truncated state was not caught")
    };
    assert!(why.contains("checksum mismatch"), "{why}");
    // no state at all
    assert!(matches!(read(&path, &fp).unwrap(), Found::None));
}

#[test]
fn a_state_of_another_run_is_refused_naming_the_difference() {
    let dir = scratch("mismatch");
    let path = dir.join("cell-5.state");
    write(&path, &fingerprint(1), serde_json::json!({}), &[]).unwrap();
    let err = read(&path, &fingerprint(2)).err().unwrap().to_string();
    assert!(err.contains("config seed: 1 in the state, 2 now"), "{err}");
    assert!(
        err.contains("or delete it to start this cell over"),
        "{err}"
    );
    let mut other_data = fingerprint(1);
    other_data.data = Fingerprint::new(
        &Config {
            seed: 1,
            ..Config::default()
        },
        &[1, 2, 4],
        &[4, 5],
    )
    .unwrap()
    .data;
    let err = read(&path, &other_data).err().unwrap().to_string();
    assert!(err.contains("data: "), "{err}");
    assert!(path.exists(), "a refused state is kept");
    // threads and the write interval do not change numbers: not part of it
    let cfg = Config {
        seed: 1,
        threads: 3,
        state_interval_seconds: 60.0,
        ..Config::default()
    };
    let fp = Fingerprint::new(&cfg, &[1, 2, 3], &[4, 5]).unwrap();
    assert!(matches!(read(&path, &fp).unwrap(), Found::State(_)));
}

#[test]
fn by_default_a_write_is_due_while_writing_stays_within_five_percent() {
    // a write of 1 s: due after 19 s of work (1 / 20 = 5%), not after 18
    assert!(write_due(0.0, 19.0, 1.0));
    assert!(!write_due(0.0, 18.0, 1.0));
    // the first safe point always writes
    assert!(write_due(0.0, 0.0, 0.0));
    // an interval ignores the cost
    assert!(write_due(60.0, 60.0, 100.0));
    assert!(!write_due(60.0, 59.0, 0.0));
}

#[test]
fn the_saver_writes_at_every_safe_point_with_a_tiny_interval_and_not_between_long_ones() {
    let dir = scratch("saver");
    let fp = fingerprint(1);
    let cfg = Config {
        state_interval_seconds: 1e-9,
        ..Config::default()
    };
    let mut every = Saver::new(dir.join("a.state"), fp.clone(), &cfg);
    let mut hourly = Saver::new(
        dir.join("b.state"),
        fp,
        &Config {
            state_interval_seconds: 3600.0,
            ..Config::default()
        },
    );
    for k in 0..3 {
        let meta = || Ok(serde_json::json!({ "k": k }));
        every.safe_point("p", meta, &[("x", &[k as f32])]).unwrap();
        hourly.safe_point("p", meta, &[("x", &[k as f32])]).unwrap();
    }
    assert_eq!(every.writes, 3);
    assert_eq!(hourly.writes, 0);
    let l = loaded(read(&every.path, &every.fingerprint).unwrap());
    assert_eq!(l.meta["k"], 2);
}

/// A state file laid out by hand: `magic`, the header JSON, the values, and
/// a correct checksum.
fn raw_state(magic: &[u8; 16], header: &serde_json::Value, values: &[f32]) -> Vec<u8> {
    let h = serde_json::to_vec(header).unwrap();
    let mut b = magic.to_vec();
    b.extend((h.len() as u64).to_le_bytes());
    b.extend(&h);
    b.extend(f32_bytes(values));
    let crc = crc32fast::hash(&b);
    b.extend(crc.to_le_bytes());
    b
}

#[test]
fn an_intact_state_of_another_version_is_refused_and_kept() {
    let dir = scratch("foreign");
    let path = dir.join("cell-5.state");
    let fp = fingerprint(1);
    write(&path, &fp, serde_json::json!({}), &[("a", &[1.0, 2.0])]).unwrap();
    // a later version's config field, with a valid checksum
    let mut header: serde_json::Value = {
        let bytes = std::fs::read(&path).unwrap();
        let hlen = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) as usize;
        serde_json::from_slice(&bytes[24..24 + hlen]).unwrap()
    };
    header["fingerprint"]["config"]["a_later_field"] = serde_json::json!(1);
    std::fs::write(&path, raw_state(MAGIC, &header, &[1.0, 2.0])).unwrap();
    let err = read(&path, &fp).err().unwrap().to_string();
    assert!(
        err.contains("holds a cell's state this build of newllm cannot read (")
            && err.contains("a_later_field"),
        "{err}"
    );
    assert!(path.exists(), "an intact state is never removed");
    // a later layout of the file itself
    std::fs::write(&path, raw_state(b"NEWLLM-STATE-v2\n", &header, &[])).unwrap();
    let err = read(&path, &fp).err().unwrap().to_string();
    assert!(err.contains("(state format v2)"), "{err}");
    assert!(path.exists());
    // the same header with a wrong checksum is damage
    let mut bad = raw_state(MAGIC, &header, &[1.0, 2.0]);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(&path, bad).unwrap();
    assert!(matches!(read(&path, &fp).unwrap(), Found::Damaged(_)));
}
