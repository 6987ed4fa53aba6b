//! Tests of corpus readers, split and cache on fixtures written to a temp dir.

use super::corpus::{load_samples, Source, EMBEDDED_SAMPLES};
use super::split::{inspect_with, load_split, load_split_with_status, val_len, Split, Validation};
use super::stream::CacheUse;
use super::tokenizer::Tokenizer;
use crate::scratch::scratch;
use arrow_array::builder::{ListBuilder, StringBuilder, StructBuilder};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::reader::{FileReader, SerializedFileReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Conversation<'a> = &'a [(&'a str, &'a str)];

/// Writes a parquet file shaped like UltraChat 200k's: prompt, prompt_id,
/// messages list<struct<content, role>>.
fn write_ultrachat_parquet(path: &Path, rows: &[Conversation]) {
    let message_fields = Fields::from(vec![
        Field::new("content", DataType::Utf8, true),
        Field::new("role", DataType::Utf8, true),
    ]);
    let struct_builder = StructBuilder::new(
        message_fields.clone(),
        vec![
            Box::new(StringBuilder::new()),
            Box::new(StringBuilder::new()),
        ],
    );
    let mut messages = ListBuilder::new(struct_builder);
    let mut prompts = Vec::new();
    let mut ids = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        prompts.push(row.first().map(|m| m.0).unwrap_or("").to_string());
        ids.push(format!("{i:064x}"));
        for (content, role) in row.iter() {
            let item = messages.values();
            item.field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(content);
            item.field_builder::<StringBuilder>(1)
                .unwrap()
                .append_value(role);
            item.append(true);
        }
        messages.append(true);
    }
    let messages = messages.finish();
    let schema = Arc::new(Schema::new(vec![
        Field::new("prompt", DataType::Utf8, true),
        Field::new("prompt_id", DataType::Utf8, true),
        Field::new("messages", messages.data_type().clone(), true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(prompts)),
        Arc::new(StringArray::from(ids)),
        Arc::new(messages),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn chat(i: usize) -> Vec<(String, String)> {
    vec![
        (
            format!("Question number {i}: what is {i} plus {i}?"),
            "user".into(),
        ),
        (
            format!("It is {}. Anything else?", 2 * i),
            "assistant".into(),
        ),
    ]
}

fn as_rows(convs: &[Vec<(String, String)>]) -> Vec<Vec<(&str, &str)>> {
    convs
        .iter()
        .map(|c| c.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect())
        .collect()
}

fn write_parquet_convs(path: &Path, convs: &[Vec<(String, String)>]) {
    let rows = as_rows(convs);
    let refs: Vec<Conversation> = rows.iter().map(|r| r.as_slice()).collect();
    write_ultrachat_parquet(path, &refs);
}

fn jsonl_line(conv: &[(String, String)]) -> String {
    let messages: Vec<serde_json::Value> = conv
        .iter()
        .map(|(c, r)| serde_json::json!({"content": c, "role": r}))
        .collect();
    serde_json::json!({"prompt": "p", "messages": messages}).to_string()
}

fn text_of(conv: &[(String, String)]) -> String {
    conv.iter()
        .map(|(c, _)| c.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn err_text<T>(result: anyhow::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn parquet_in_ultrachat_shape_yields_joined_contents() {
    let dir = scratch("pq-one");
    let path = dir.join("train_sft-00000-of-00001.parquet");
    let rows: [Conversation; 3] = [
        &[
            ("How do plants grow?", "user"),
            ("With light and water.", "assistant"),
        ],
        &[
            ("Hi", "user"),
            ("Hello!", "assistant"),
            ("Bye\nnow", "user"),
        ],
        &[],
    ];
    write_ultrachat_parquet(&path, &rows);
    let samples = load_samples(path.to_str().unwrap()).unwrap();
    assert_eq!(
        samples,
        vec![
            "How do plants grow?\nWith light and water.".to_string(),
            "Hi\nHello!\nBye\nnow".to_string(),
            String::new(),
        ]
    );
}

#[test]
fn parquet_split_directory_is_read_in_name_order() {
    let dir = scratch("pq-dir");
    let convs: Vec<_> = (0..9).map(chat).collect();
    // Written out of order, with Hub-style hash suffixes; a README is ignored.
    let names = [
        "train_sft-00002-of-00003-cc.parquet",
        "train_sft-00000-of-00003-aa.parquet",
        "train_sft-00001-of-00003-bb.parquet",
    ];
    for (k, name) in names.iter().enumerate() {
        let shard = [2, 0, 1][k];
        write_parquet_convs(&dir.join(name), &convs[shard * 3..shard * 3 + 3]);
    }
    std::fs::write(dir.join("README.md"), "not a corpus file").unwrap();
    let expected: Vec<String> = convs.iter().map(|c| text_of(c)).collect();
    assert_eq!(load_samples(dir.to_str().unwrap()).unwrap(), expected);

    // A pattern picks one split out of a directory that holds several.
    write_parquet_convs(&dir.join("test_sft-00000-of-00001-dd.parquet"), &convs[..1]);
    let err = err_text(load_samples(dir.to_str().unwrap()));
    assert!(
        err.contains("holds files of several splits (test_sft, train_sft)"),
        "{err}"
    );
    assert!(err.contains("train_sft-*.parquet"), "{err}");
    let pattern = format!("{}/train_sft-*.parquet", dir.display());
    assert_eq!(load_samples(&pattern).unwrap(), expected);

    // Samples are read lazily across files: 4 samples = file 0 plus one row of file 1.
    let split = load_split(&pattern, 4, Validation::Tail(0.1), &dir.join("cache")).unwrap();
    let tok = Tokenizer::gpt2().unwrap();
    let full: Vec<u32> = expected[..4].iter().flat_map(|s| tok.encode(s)).collect();
    assert_eq!([split.train, split.val].concat(), full);
}

#[test]
fn jsonl_plain_and_gzip_and_text_readers() {
    let dir = scratch("jsonl-text");
    let convs: Vec<_> = (0..3).map(chat).collect();
    let body = format!(
        "{}\n\n{}\r\n{}\n",
        jsonl_line(&convs[0]),
        jsonl_line(&convs[1]),
        jsonl_line(&convs[2])
    );
    let expected: Vec<String> = convs.iter().map(|c| text_of(c)).collect();
    let jsonl = dir.join("chat.jsonl");
    std::fs::write(&jsonl, &body).unwrap();
    assert_eq!(load_samples(jsonl.to_str().unwrap()).unwrap(), expected);

    let gz = dir.join("chat.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, body.as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    assert_eq!(load_samples(gz.to_str().unwrap()).unwrap(), expected);

    let txt = dir.join("docs.txt");
    std::fs::write(
        &txt,
        "First doc\nline two\n<|endofsample|>\nSecond doc\n<|endofsample|>  \n\n<|endofsample|>\n",
    )
    .unwrap();
    assert_eq!(
        load_samples(txt.to_str().unwrap()).unwrap(),
        vec!["First doc\nline two".to_string(), "Second doc".to_string()]
    );
    let plain = dir.join("one.txt");
    std::fs::write(&plain, "no separator here\n").unwrap();
    assert_eq!(
        load_samples(plain.to_str().unwrap()).unwrap(),
        vec!["no separator here\n"]
    );

    let txt_dir = dir.join("txts");
    std::fs::create_dir_all(&txt_dir).unwrap();
    std::fs::write(txt_dir.join("b.txt"), "bee").unwrap();
    std::fs::write(txt_dir.join("a.txt"), "ay\n<|endofsample|>\nstill ay").unwrap();
    std::fs::write(txt_dir.join("c.txt"), "  \n").unwrap();
    let lone_dir = dir.join("lone");
    std::fs::create_dir_all(&lone_dir).unwrap();
    std::fs::write(lone_dir.join("only.txt"), "x\n<|endofsample|>\ny").unwrap();
    assert_eq!(
        load_samples(lone_dir.to_str().unwrap()).unwrap(),
        vec!["x\n<|endofsample|>\ny".to_string()]
    );
    assert_eq!(
        load_samples(txt_dir.to_str().unwrap()).unwrap(),
        vec![
            "ay\n<|endofsample|>\nstill ay".to_string(),
            "bee".to_string()
        ]
    );
}

#[test]
fn val_len_matches_python_int() {
    assert_eq!(val_len(587_970, 0.1), 58_797);
    assert_eq!(587_970 - val_len(587_970, 0.1), 529_173);
    assert_eq!(val_len(29, 0.1), 2);
    assert_eq!(val_len(10, 0.1), 1);
    assert_eq!(val_len(9, 0.1), 0);
    // Python: int(90 * 0.7) == 62 because 90 * 0.7 == 62.99999999999999.
    assert_eq!(val_len(90, 0.7), 62);
}

#[test]
fn validation_tokens_never_enter_training() {
    let dir = scratch("leak");
    let mut convs: Vec<_> = (0..6).map(chat).collect();
    // A long last conversation, so the validation tail lies inside it.
    let body = "the quick brown fox jumps over the lazy dog ".repeat(8);
    let tail = |animal: &str| format!("{body}and then the {animal} sat down.");
    convs.push(vec![(tail("cat"), "user".into())]);
    let path = dir.join("chat.parquet");
    write_parquet_convs(&path, &convs);
    let corpus = path.to_str().unwrap();
    let cache = dir.join("cache");
    let split = load_split(corpus, 7, Validation::Tail(0.1), &cache).unwrap();

    let tok = Tokenizer::gpt2().unwrap();
    let pieces: Vec<Vec<u32>> = convs.iter().map(|c| tok.encode(&text_of(c))).collect();
    let full = pieces.concat();
    let len = full.len();
    assert_eq!(split.samples, 7);
    assert_eq!(split.val.len(), val_len(len, 0.1));
    assert_eq!(split.train.len() + split.val.len(), len);
    assert_eq!(split.train[..], full[..split.train.len()]);
    assert_eq!(split.val[..], full[split.train.len()..]);
    assert_eq!(split.sample_ends.len(), 7);
    assert_eq!(*split.sample_ends.last().unwrap(), len);
    assert_eq!(split.sample_ends[0], pieces[0].len());
    let last_start = split.sample_ends[5];
    assert!(
        split.train.len() > last_start,
        "fixture: val must lie in the last sample"
    );

    // Same token count, different last words: train is untouched.
    convs[6] = vec![(tail("dog"), "user".into())];
    write_parquet_convs(&path, &convs);
    let changed = load_split(corpus, 7, Validation::Tail(0.1), &cache).unwrap();
    assert_eq!(changed.train, split.train);
    assert_eq!(changed.val.len(), split.val.len());
    assert_ne!(changed.val, split.val);
}

/// `n` chat conversations as `dir/chat.jsonl`.
fn chat_jsonl(dir: &Path, n: usize) -> (Vec<Vec<(String, String)>>, PathBuf) {
    let convs: Vec<_> = (0..n).map(chat).collect();
    let path = dir.join("chat.jsonl");
    let lines: Vec<String> = convs.iter().map(|c| jsonl_line(c)).collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    (convs, path)
}

/// Tail mode: the validation samples are the ones the tail overlaps (the
/// first partly), and every position is binned to its target's sample.
#[test]
fn tail_validation_is_binned_by_sample() {
    let split = Split {
        samples: 3,
        train: vec![1; 7],
        val: vec![2; 6],
        sample_ends: vec![4, 9, 13],
        val_sample_ends: vec![2, 6],
        source: "test".into(),
    };
    // positions 0..5 predict val[1..6]: targets 1 in sample 0, 2..5 in sample 1
    assert_eq!(split.val_bins(), vec![0, 1, 1, 1, 1]);
    assert_eq!(split.val_positions_per_sample(), vec![1, 4]);
    let dir = scratch("tail-bins");
    let (_, path) = chat_jsonl(&dir, 6);
    let split = load_split(path.to_str().unwrap(), 6, Validation::Tail(0.4), &dir).unwrap();
    let start = split.train.len();
    let want: Vec<usize> = split
        .sample_ends
        .iter()
        .filter(|&&e| e > start)
        .map(|e| e - start)
        .collect();
    assert!(want.len() >= 2, "fixture: the tail spans samples");
    assert_eq!(split.val_sample_ends, want);
    assert_eq!(*want.last().unwrap(), split.val.len());
    let counts = split.val_positions_per_sample();
    assert_eq!(counts.iter().sum::<usize>(), split.val.len() - 1);
    assert_eq!(
        counts[1..],
        want.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()[..]
    );
}

/// Heldout mode: the corpus's last k samples validate every cell (identical
/// ids and identity), training is exactly the first N samples, the tail's
/// tokenization is cached, and a corpus too small is refused naming the
/// numbers.
#[test]
fn heldout_validation_is_the_same_last_samples_for_every_cell() {
    let dir = scratch("heldout");
    let (convs, path) = chat_jsonl(&dir, 9);
    let corpus = path.to_str().unwrap();
    let cache = dir.join("cache");
    let tok = Tokenizer::gpt2().unwrap();
    let pieces: Vec<Vec<u32>> = convs.iter().map(|c| tok.encode(&text_of(c))).collect();
    let (first, used) = load_split_with_status(corpus, 6, Validation::Heldout(3), &cache).unwrap();
    assert_eq!(used, CacheUse::Built);
    assert_eq!(first.train, pieces[..6].concat());
    assert_eq!(first.val, pieces[6..].concat());
    let mut ends = Vec::new();
    for p in &pieces[6..] {
        ends.push(ends.last().copied().unwrap_or(0) + p.len());
    }
    assert_eq!(first.val_sample_ends, ends);
    for n in [2, 6] {
        let (split, used) =
            load_split_with_status(corpus, n, Validation::Heldout(3), &cache).unwrap();
        assert_eq!(used, CacheUse::Reused);
        assert_eq!(split.train, pieces[..n].concat());
        assert_eq!(split.sample_ends.len(), n);
        assert_eq!(split.val, first.val);
        assert_eq!(split.val_set_id(), first.val_set_id());
    }
    let tail = load_split(corpus, 6, Validation::Tail(0.1), &cache).unwrap();
    assert_ne!(tail.val_set_id(), first.val_set_id());
    let err = err_text(load_split(corpus, 7, Validation::Heldout(3), &cache));
    assert!(
        err.contains("has 9 samples, too few for 7 training samples plus a held-out validation set of 3 (val_samples)"),
        "{err}"
    );
}

#[test]
fn cache_is_reused_and_invalidated() {
    let dir = scratch("cache");
    let (convs, path) = chat_jsonl(&dir, 8);
    let lines: Vec<String> = convs.iter().map(|c| jsonl_line(c)).collect();
    let corpus = path.to_str().unwrap();
    let cache = dir.join("cache");
    let tok = Tokenizer::gpt2().unwrap();
    let expect = |n: usize, texts: &[String]| -> Vec<u32> {
        texts[..n].iter().flat_map(|s| tok.encode(s)).collect()
    };
    let texts: Vec<String> = convs.iter().map(|c| text_of(c)).collect();

    let (first, used) = load_split_with_status(corpus, 5, Validation::Tail(0.2), &cache).unwrap();
    assert_eq!(used, CacheUse::Built);
    assert_eq!(
        [first.train.clone(), first.val.clone()].concat(),
        expect(5, &texts)
    );

    // Fewer samples and another val_fraction reuse the same tokenization.
    let (again, used) = load_split_with_status(corpus, 5, Validation::Tail(0.2), &cache).unwrap();
    assert_eq!((used, &again), (CacheUse::Reused, &first));
    let (fewer, used) = load_split_with_status(corpus, 3, Validation::Tail(0.5), &cache).unwrap();
    assert_eq!(used, CacheUse::Reused);
    let full3 = expect(3, &texts);
    assert_eq!(fewer.val.len(), val_len(full3.len(), 0.5));
    assert_eq!([fewer.train, fewer.val].concat(), full3);
    assert_eq!(fewer.sample_ends, first.sample_ends[..3]);

    // More samples than cached: rebuilt, then reused.
    let (more, used) = load_split_with_status(corpus, 8, Validation::Tail(0.1), &cache).unwrap();
    assert_eq!(used, CacheUse::Built);
    assert_eq!([more.train, more.val].concat(), expect(8, &texts));
    assert_eq!(
        load_split_with_status(corpus, 2, Validation::Tail(0.1), &cache)
            .unwrap()
            .1,
        CacheUse::Reused
    );
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        1,
        "one cache file per corpus"
    );

    // Editing the source rebuilds it.
    let mut edited = texts.clone();
    edited[0] = "Completely different opening words".to_string();
    let mut lines = lines.clone();
    lines[0] =
        serde_json::json!({"messages": [{"content": edited[0], "role": "user"}]}).to_string();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let (after, used) = load_split_with_status(corpus, 5, Validation::Tail(0.2), &cache).unwrap();
    assert_eq!(used, CacheUse::Built);
    assert_eq!([after.train, after.val].concat(), expect(5, &edited));

    // A damaged cache file is rebuilt, not trusted.
    let cache_file = std::fs::read_dir(&cache)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&cache_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&cache_file, &bytes).unwrap();
    let (repaired, used) =
        load_split_with_status(corpus, 5, Validation::Tail(0.2), &cache).unwrap();
    assert_eq!(used, CacheUse::Built);
    assert_eq!([repaired.train, repaired.val].concat(), expect(5, &edited));
}

#[test]
fn too_many_samples_is_a_clear_error() {
    let dir = scratch("too-many");
    let path = dir.join("chat.parquet");
    write_parquet_convs(&path, &(0..4).map(chat).collect::<Vec<_>>());
    let corpus = path.to_str().unwrap();
    let cache = dir.join("cache");
    let err = err_text(load_split(corpus, 500, Validation::Tail(0.1), &cache));
    assert!(
        err.contains(
            "has 4 samples but 500 were requested; lower sample_counts or give a larger corpus"
        ),
        "{err}"
    );
    assert!(err.contains("chat.parquet"), "{err}");
    // Same answer when the complete corpus is already cached.
    assert!(load_split(corpus, 4, Validation::Tail(0.5), &cache).is_ok());
    let err = err_text(load_split(corpus, 5, Validation::Tail(0.1), &cache));
    assert!(err.contains("has 4 samples but 5 were requested"), "{err}");
    // Too few tokens for a validation part.
    let err = err_text(load_split(corpus, 1, Validation::Tail(0.1), &cache));
    assert!(err.contains("each needs at least 2"), "{err}");
    let err = err_text(load_split(corpus, 1, Validation::Tail(1.5), &cache));
    assert!(err.contains("val_fraction is 1.5"), "{err}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = scratch("bad");
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let missing = dir.join("nowhere.parquet");
    let err = err_text(load_samples(&s(&missing)));
    assert!(err.contains("nowhere.parquet does not exist"), "{err}");

    let unknown = dir.join("data.csv");
    std::fs::write(&unknown, "a,b").unwrap();
    let err = err_text(load_samples(&s(&unknown)));
    assert!(
        err.contains("cannot tell the format of corpus file"),
        "{err}"
    );

    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "\n\n").unwrap();
    let err = err_text(load_samples(&s(&empty)));
    assert!(err.contains("empty.jsonl is empty (no samples)"), "{err}");
    let err = err_text(load_split(
        &s(&empty),
        1,
        Validation::Tail(0.1),
        &dir.join("cache"),
    ));
    assert!(err.contains("is empty (no samples)"), "{err}");

    let empty_dir = dir.join("nothing");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let err = err_text(load_samples(&s(&empty_dir)));
    assert!(
        err.contains("has no .parquet, .jsonl, .jsonl.gz or .txt files"),
        "{err}"
    );

    let truncated = dir.join("truncated.jsonl");
    let good = jsonl_line(&chat(1));
    std::fs::write(&truncated, format!("{good}\n{}", &good[..good.len() / 2])).unwrap();
    let err = err_text(load_samples(&s(&truncated)));
    assert!(
        err.contains("truncated.jsonl: line 2 is not valid JSON"),
        "{err}"
    );

    let no_messages = dir.join("nomsg.jsonl");
    std::fs::write(
        &no_messages,
        format!("{good}\n{good}\n{{\"conversation\": []}}\n"),
    )
    .unwrap();
    let err = err_text(load_samples(&s(&no_messages)));
    assert!(
        err.contains("nomsg.jsonl: line 3 has no \"messages\" field"),
        "{err}"
    );

    let no_content = dir.join("nocontent.jsonl");
    std::fs::write(
        &no_content,
        "{\"messages\": [{\"role\": \"user\", \"text\": \"hi\"}]}\n",
    )
    .unwrap();
    let err = err_text(load_samples(&s(&no_content)));
    assert!(
        err.contains("line 1: message 0 has no string \"content\" field"),
        "{err}"
    );

    let bad_utf8 = dir.join("latin1.txt");
    std::fs::write(&bad_utf8, b"fine\nstill fine\ncaf\xe9\n").unwrap();
    let err = err_text(load_samples(&s(&bad_utf8)));
    assert!(
        err.contains("latin1.txt: line 3 is not valid UTF-8"),
        "{err}"
    );
    let bad_utf8_jsonl = dir.join("latin1.jsonl");
    std::fs::write(
        &bad_utf8_jsonl,
        [
            good.as_bytes(),
            b"\n{\"messages\":[{\"content\":\"caf\xe9\"}]}",
        ]
        .concat(),
    )
    .unwrap();
    let err = err_text(load_samples(&s(&bad_utf8_jsonl)));
    assert!(
        err.contains("latin1.jsonl: line 2 is not valid UTF-8"),
        "{err}"
    );

    let bad_gz = dir.join("cut.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, good.repeat(50).as_bytes()).unwrap();
    let gz = enc.finish().unwrap();
    std::fs::write(&bad_gz, &gz[..gz.len() / 2]).unwrap();
    let err = err_text(load_samples(&s(&bad_gz)));
    assert!(
        err.contains("cut.jsonl.gz: cannot decompress gzip data"),
        "{err}"
    );

    // Parquet: a file cut in half, garbage, and a table without `messages`.
    let whole = dir.join("whole.parquet");
    write_parquet_convs(&whole, &(0..50).map(chat).collect::<Vec<_>>());
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = err_text(load_samples(&s(&cut)));
    assert!(
        err.contains("cut.parquet: not a readable parquet file"),
        "{err}"
    );
    let garbage = dir.join("garbage.parquet");
    std::fs::write(&garbage, b"PAR1 this is not parquet at all PAR1").unwrap();
    let err = err_text(load_samples(&s(&garbage)));
    assert!(
        err.contains("garbage.parquet: not a readable parquet file"),
        "{err}"
    );

    let no_col = dir.join("nocol.parquet");
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(vec!["a"])) as ArrayRef],
    )
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(&no_col).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let err = err_text(load_samples(&s(&no_col)));
    assert!(
        err.contains("nocol.parquet: no \"messages\" column (columns: text)"),
        "{err}"
    );
}

#[test]
fn parquet_with_damaged_messages_pages_is_an_error() {
    // Overwrite the middle of the `messages` column chunk, keeping the footer:
    // the file opens but its rows cannot be decoded.
    let dir = scratch("pq-damaged");
    let whole = dir.join("whole.parquet");
    let convs: Vec<_> = (0..200).map(chat).collect();
    write_parquet_convs(&whole, &convs);
    let reader = SerializedFileReader::new(std::fs::File::open(&whole).unwrap()).unwrap();
    let chunk = reader.metadata().row_group(0).column(2);
    // Leaf 2 is messages.content (leaves: prompt, prompt_id, content, role).
    let (start, len) = chunk.byte_range();
    let (start, len) = (start as usize, len as usize);
    let mut bytes = std::fs::read(&whole).unwrap();
    for b in &mut bytes[start + 4..start + len / 2] {
        *b = 0xa5;
    }
    std::fs::write(&whole, &bytes).unwrap();
    let err = err_text(load_samples(whole.to_str().unwrap()));
    assert!(
        err.contains("whole.parquet: cannot read rows from row index 0 on"),
        "{err}"
    );
}

#[test]
fn inspect_reports_counts_and_splits() {
    let dir = scratch("inspect");
    let path = dir.join("docs.txt");
    std::fs::write(
        &path,
        "one two three\n<|endofsample|>\nfour five\n<|endofsample|>\nsix seven eight nine ten\n",
    )
    .unwrap();
    let report = inspect_with(path.to_str().unwrap(), &[2, 3, 4], 0.5, &dir.join("cache")).unwrap();
    let tok = Tokenizer::gpt2().unwrap();
    let lens: Vec<usize> = ["one two three", "four five", "six seven eight nine ten\n"]
        .iter()
        .map(|t| tok.encode(t).len())
        .collect();
    assert_eq!(lens, [3, 2, 6]);
    let expected = format!(
        "corpus: {}\nsamples: 3\ntokens per sample: min 2, median 3, max 6\ntotal tokens: 11\n\
         val_fraction: 0.5\nN = 2: 5 tokens, train 3, val 2\nN = 3: 11 tokens, train 6, val 5\n\
         N = 4: not possible, the corpus has 3 samples\n",
        path.display()
    );
    assert_eq!(report, expected);
}

#[test]
fn embedded_corpus_loads() {
    let samples = load_samples("").unwrap();
    assert_eq!(samples.len(), EMBEDDED_SAMPLES);
    assert!(
        samples[0].starts_with("Hello\nHow are you doing today?\nwhats up MD"),
        "{}",
        samples[0]
    );
    assert!(samples.iter().filter(|s| s.trim().is_empty()).count() < 10);

    let dir = scratch("embedded");
    let split = load_split("", 50, Validation::Tail(0.1), &dir).unwrap();
    assert_eq!(split.source, "embedded chitchat-dataset 0.9.0");
    let tok = Tokenizer::gpt2().unwrap();
    let full: Vec<u32> = samples[..50].iter().flat_map(|s| tok.encode(s)).collect();
    assert_eq!([split.train, split.val].concat(), full);
    assert!(matches!(Source::resolve("").unwrap(), Source::Embedded));
}

#[test]
fn embedded_corpus_inspect_figures() {
    // Tokenizes all 7,168 conversations (about 1.5 s on 2 cores).
    let dir = scratch("embedded-inspect");
    let report = super::split::inspect("", &[50, 100, 200, 500], &dir).unwrap();
    let expected = "corpus: embedded chitchat-dataset 0.9.0\nsamples: 7168\n\
        tokens per sample: min 1, median 61, max 26627\ntotal tokens: 3196530\n\
        val_fraction: 0.1\nN = 50: 15461 tokens, train 13915, val 1546\n\
        N = 100: 32404 tokens, train 29164, val 3240\nN = 200: 79571 tokens, train 71614, val 7957\n\
        N = 500: 226531 tokens, train 203878, val 22653\n";
    assert_eq!(report, expected);
    // inspect cached every sample, so a run on N = 500 reuses it.
    let (split, used) = load_split_with_status("", 500, Validation::Tail(0.1), &dir).unwrap();
    assert_eq!(used, CacheUse::Reused);
    assert_eq!((split.train.len(), split.val.len()), (203_878, 22_653));
}

#[test]
fn parquet_null_rows_and_mixed_directories_are_errors() {
    let dir = scratch("pq-null");
    let fields = Fields::from(vec![
        Field::new("content", DataType::Utf8, true),
        Field::new("role", DataType::Utf8, true),
    ]);
    let item = StructBuilder::new(
        fields,
        vec![
            Box::new(StringBuilder::new()),
            Box::new(StringBuilder::new()),
        ],
    );
    let mut messages = ListBuilder::new(item);
    for (row, valid) in [true, true, false].into_iter().enumerate() {
        if valid {
            let item = messages.values();
            let text = format!("row {row}");
            item.field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(&text);
            item.field_builder::<StringBuilder>(1)
                .unwrap()
                .append_null();
            item.append(true);
        }
        messages.append(valid);
    }
    let messages = messages.finish();
    let schema = Arc::new(Schema::new(vec![Field::new(
        "messages",
        messages.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(messages) as ArrayRef]).unwrap();
    let path = dir.join("nulls.parquet");
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let err = err_text(load_samples(path.to_str().unwrap()));
    assert!(
        err.contains("nulls.parquet: row index 2: \"messages\" is null"),
        "{err}"
    );
    // The rows before the bad one are fine (a null role does not matter).
    let split = load_split(
        path.to_str().unwrap(),
        2,
        Validation::Tail(0.5),
        &dir.join("cache"),
    )
    .unwrap();
    let tok = Tokenizer::gpt2().unwrap();
    let expected = [tok.encode("row 0"), tok.encode("row 1")].concat();
    assert_eq!([split.train, split.val].concat(), expected);

    std::fs::write(dir.join("extra.jsonl"), jsonl_line(&chat(0))).unwrap();
    let err = err_text(load_samples(dir.to_str().unwrap()));
    assert!(err.contains("mixes file formats"), "{err}");
}
