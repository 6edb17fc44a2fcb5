//! Property tests of the work protocol: ids, the forward-only status rule, and parsing a
//! submission.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests state their expectations

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value};
use workpool_core::ids::IdScope;
use workpool_core::message::{DEFAULT_TASK, WorkSubmission};
use workpool_core::record::BackwardTransition;
use workpool_core::{WorkId, WorkRecord, WorkStatus};

/// Arbitrary JSON: every kind of scalar, nested arrays and objects with short keys so that
/// objects often share keys.
fn json() -> impl Strategy<Value = Value> {
    json_with(
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .boxed(),
    )
}

/// Arbitrary JSON whose floats are those of `floats`.
fn json_with(floats: BoxedStrategy<f64>) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        floats.prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(("[a-e]{0,3}", inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// `value` as JSON text, with every object's keys in an order chosen by `seed` and, if
/// `spaced`, whitespace between the tokens: what different clients may send for it.
fn render(value: &Value, seed: &mut u64, spaced: bool, out: &mut String) {
    let gap = if spaced { " \n\t" } else { "" };
    match value {
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                    out.push_str(gap);
                }
                render(item, seed, spaced, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // A seeded Fisher-Yates shuffle (an LCG is plenty to vary the order).
            for i in (1..entries.len()).rev() {
                *seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let j = usize::try_from((*seed >> 33) % (i as u64 + 1)).unwrap();
                entries.swap(i, j);
            }
            out.push('{');
            out.push_str(gap);
            for (n, (key, item)) in entries.into_iter().enumerate() {
                if n > 0 {
                    out.push(',');
                    out.push_str(gap);
                }
                out.push_str(&serde_json::to_string(key).unwrap());
                out.push_str(gap);
                out.push(':');
                out.push_str(gap);
                render(item, seed, spaced, out);
            }
            out.push_str(gap);
            out.push('}');
        }
        scalar => out.push_str(&serde_json::to_string(scalar).unwrap()),
    }
}

fn rendered(value: &Value, seed: u64, spaced: bool) -> String {
    let mut seed = seed;
    let mut out = String::new();
    render(value, &mut seed, spaced, &mut out);
    out
}

fn is_lower_hex_32(text: &str) -> bool {
    text.chars().count() == 32 && text.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

fn status() -> impl Strategy<Value = WorkStatus> {
    prop_oneof![
        Just(WorkStatus::Pending),
        Just(WorkStatus::Working),
        Just(WorkStatus::Worked),
        Just(WorkStatus::Failed),
        Just(WorkStatus::Cancelled),
    ]
}

/// The order the docs give: `pending < working < worked|failed|cancelled`.
fn rank(status: WorkStatus) -> u8 {
    match status {
        WorkStatus::Pending => 0,
        WorkStatus::Working => 1,
        WorkStatus::Worked | WorkStatus::Failed | WorkStatus::Cancelled => 2,
    }
}

fn instant(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
}

fn record() -> impl Strategy<Value = WorkRecord> {
    (
        status(),
        prop::option::of(json()),
        prop::option::of(".{0,20}"),
        0u32..10,
        prop::option::of("[a-z0-9-]{1,12}"),
        "[a-z0-9_-]{1,10}",
        prop::option::of(".{1,10}"),
        0i64..1_000_000,
    )
        .prop_map(|(status, result, error, attempts, worker, task, key, at)| {
            // Built from `pending` so fields added to the record later get their
            // defaults here.
            let mut record = WorkRecord::pending(&task, key.as_deref(), "api-0", instant(at));
            record.status = status;
            record.result = result;
            record.error = error;
            record.attempts = attempts;
            record.worker = worker;
            record
        })
}

/// Task names the api accepts, and some it does not.
fn task() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        "[A-Za-z0-9_-]{1,64}",
        ".{0,70}",
        Just(DEFAULT_TASK.to_owned()),
    ])
}

fn config() -> Config {
    Config {
        cases: 256,
        // A failure prints its minimal input; no regression file in the source tree.
        failure_persistence: None,
        ..Config::default()
    }
}

/// Floats that survive serde_json's default (fast, not always exact) float parsing:
/// short decimals. Exact round trips of every float need its `float_roundtrip` feature.
fn short_floats() -> BoxedStrategy<f64> {
    (-1_000_000i64..1_000_000, 0u32..4)
        .prop_map(|(mantissa, scale)| mantissa as f64 / 10f64.powi(scale as i32))
        .boxed()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn content_ids_are_deterministic_canonical_and_well_formed(
        task in ".{0,16}",
        key in prop::option::of(".{0,16}"),
        data in json(),
        seed in any::<u64>(),
    ) {
        let id = WorkId::from_content(&task, key.as_deref(), &data);
        prop_assert_eq!(&id, &WorkId::from_content(&task, key.as_deref(), &data.clone()));
        prop_assert!(is_lower_hex_32(id.as_str()), "{}", id);
        prop_assert_eq!(id.as_str().parse::<WorkId>(), Ok(id.clone()));
        prop_assert_eq!(id.to_string(), id.as_str());
        let json_id: WorkId = serde_json::from_value(serde_json::to_value(&id).unwrap()).unwrap();
        prop_assert_eq!(&json_id, &id);

        // The same data as two clients may send it: keys in another order, other spacing.
        let compact = rendered(&data, seed, false);
        let shuffled = rendered(&data, seed.wrapping_add(1), true);
        let a: Value = serde_json::from_str(&compact).unwrap();
        let b: Value = serde_json::from_str(&shuffled).unwrap();
        prop_assert_eq!(
            WorkId::from_content(&task, key.as_deref(), &a),
            WorkId::from_content(&task, key.as_deref(), &b),
            "{} vs {}", compact, shuffled
        );
    }

    #[test]
    fn idempotency_key_ids_are_deterministic_and_well_formed(key in ".{0,40}") {
        let id = WorkId::from_idempotency_key(&key);
        prop_assert_eq!(&id, &WorkId::from_idempotency_key(&key));
        prop_assert!(is_lower_hex_32(id.as_str()), "{}", id);
        prop_assert_eq!(id.as_str().parse::<WorkId>(), Ok(id.clone()));
    }

    #[test]
    fn parsing_accepts_exactly_32_lowercase_hex(
        text in prop_oneof![
            any::<String>(),
            "[0-9a-f]{32}",
            "[0-9a-fA-F]{31,33}",
            "[0-9a-g]{32}",
            "[0-9a-f\u{e9}\u{0}]{30,32}",
        ]
    ) {
        let parsed = text.parse::<WorkId>();
        prop_assert_eq!(parsed.is_ok(), is_lower_hex_32(&text), "{:?}", text);
        if let Ok(id) = parsed {
            prop_assert_eq!(id.as_str(), text.as_str());
        }
        let from_json = serde_json::from_value::<WorkId>(Value::String(text.clone()));
        prop_assert_eq!(from_json.is_ok(), is_lower_hex_32(&text));
    }

    #[test]
    fn different_work_gets_different_ids(
        a in "[a-c]{0,3}",
        b in "[a-c]{1,3}",
        c in "[a-c]{0,3}",
    ) {
        // Triples whose fields concatenate to the same bytes: only the length prefixes
        // tell them apart.
        let candidates: Vec<(String, Option<String>, Value)> = vec![
            (format!("{a}{b}"), Some(c.clone()), Value::Null),
            (a.clone(), Some(format!("{b}{c}")), Value::Null),
            (format!("{a}{b}{c}"), None, Value::Null),
            (format!("{a}{b}{c}"), Some(String::new()), Value::Null),
            (a.clone(), Some(b.clone()), Value::String(c.clone())),
            (format!("{a}{b}"), None, Value::String(c.clone())),
            (a.clone(), None, Value::String(format!("{b}{c}"))),
            (a.clone(), Some("nokey".into()), Value::Null),
            (a.clone(), None, Value::Null),
            (a.clone(), Some(b.clone()), serde_json::json!([c.clone()])),
        ];
        for (i, one) in candidates.iter().enumerate() {
            for other in &candidates[i + 1..] {
                if one == other {
                    continue;
                }
                prop_assert_ne!(
                    WorkId::from_content(&one.0, one.1.as_deref(), &one.2),
                    WorkId::from_content(&other.0, other.1.as_deref(), &other.2),
                    "{:?} and {:?}", one, other
                );
            }
        }
    }

    #[test]
    fn may_become_is_the_documented_order(from in status(), to in status()) {
        let expected = rank(to) > rank(from)
            || (from == WorkStatus::Working && to == WorkStatus::Working);
        prop_assert_eq!(from.may_become(to), expected, "{:?} -> {:?}", from, to);
        prop_assert_eq!(from.is_terminal(), rank(from) == 2);
    }

    #[test]
    fn advancing_only_moves_forward_and_a_refusal_changes_nothing(
        start in record(),
        attempts in prop::collection::vec(status(), 0..24),
    ) {
        let mut record = start;
        for (n, next) in attempts.into_iter().enumerate() {
            let before = record.clone();
            let now = before.updated_at + Duration::seconds(i64::try_from(n).unwrap() + 1);
            match record.advance(next, now) {
                Ok(()) => {
                    prop_assert!(!before.status.is_terminal(), "{:?} changed", before.status);
                    prop_assert!(rank(next) >= rank(before.status));
                    prop_assert!(before.status.may_become(next));
                    // Only the status and its time change.
                    let expected = WorkRecord { status: next, updated_at: now, ..before };
                    prop_assert_eq!(&record, &expected);
                }
                Err(err) => {
                    prop_assert!(!before.status.may_become(next));
                    prop_assert_eq!(&record, &before);
                    prop_assert_eq!(err, BackwardTransition {
                        from: before.status.as_str(),
                        to: next.as_str(),
                    });
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_submission_parser(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            // Almost-submissions: a JSON object with some of the fields, as bytes.
            (json(), task(), prop::option::of(".{0,8}"), ".{0,8}").prop_map(
                |(data, task, key, extra)| {
                    let mut object = Map::new();
                    object.insert("data".into(), data);
                    if let Some(task) = task {
                        object.insert("task".into(), Value::String(task));
                    }
                    if let Some(key) = key {
                        object.insert("key".into(), Value::String(key));
                    }
                    if !extra.is_empty() {
                        object.insert(extra, Value::Null);
                    }
                    serde_json::to_vec(&object).unwrap()
                }
            ),
            // Deep nesting, past serde_json's recursion limit.
            (1usize..2000).prop_map(|depth| {
                format!("{{\"data\":{}{}}}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
            }),
        ]
    ) {
        if let Ok(submission) = serde_json::from_slice::<WorkSubmission>(&bytes) {
            let _ = submission.validate();
            let id = submission.id(IdScope::default(), None);
            prop_assert!(is_lower_hex_32(id.as_str()));
        }
    }

    #[test]
    fn submissions_round_trip(
        data in json_with(short_floats()),
        task in task(),
        key in prop::option::of(".{0,300}"),
        idempotency_key in prop::option::of(".{1,20}"),
    ) {
        let submission = WorkSubmission { data, task, key, ttl: None, run_at: None, delay: None, priority: None, callback_url: None, group: None, };
        let bytes = serde_json::to_vec(&submission).unwrap();
        let parsed: WorkSubmission = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(&parsed, &submission);
        prop_assert_eq!(parsed.validate(), submission.validate());
        prop_assert_eq!(
            parsed.id(IdScope::default(), idempotency_key.as_deref()),
            submission.id(IdScope::default(), idempotency_key.as_deref())
        );
        if submission.validate().is_ok() {
            prop_assert!(!parsed.task().is_empty() && parsed.task().len() <= 64);
            prop_assert!(parsed.key.as_ref().is_none_or(|key| (1..=256).contains(&key.len())));
        }
        // Naming the default task is the same work as naming none.
        if submission.task.as_deref() == Some(DEFAULT_TASK) {
            let unnamed = WorkSubmission { task: None, ..submission.clone() };
            prop_assert_eq!(unnamed.id(IdScope::default(), None), submission.id(IdScope::default(), None));
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// The work a handler gets is the work the client sent, to the last bit of every
    /// float. Without serde_json's `float_roundtrip` feature (on in the workspace), some
    /// floats came back one ulp off (-3.2816173337235715e+260 as -3.281617333723572e+260).
    #[test]
    fn every_float_in_the_data_round_trips(data in json()) {
        let submission = WorkSubmission { data, task: None, key: None, ttl: None, run_at: None, delay: None, priority: None, callback_url: None, group: None, };
        let parsed: WorkSubmission =
            serde_json::from_slice(&serde_json::to_vec(&submission).unwrap()).unwrap();
        prop_assert_eq!(parsed, submission);
    }
}
