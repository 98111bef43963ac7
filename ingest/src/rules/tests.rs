//! Table-driven tests of the rule language: each row is a rule, a publish and the expected outcome as text.

use freshet_storage::StreamName;
use serde_json::Value;

use super::*;

const TOPIC: &str = "devices/dev-7/telemetry";
const CLIENT: &str = "client-1";
const ARRIVAL_MS: i64 = 1_700_000_000_123;

fn limits() -> RuleLimits {
    RuleLimits {
        payload_bytes_max: 256,
        record_bytes_max: 512,
    }
}

fn rule_config(name: &str, sql: &str, stream: &str, key: &str, error_stream: Option<&str>) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        sql: sql.into(),
        stream: stream.into(),
        partition_key: key.into(),
        error_stream: error_stream.map(Into::into),
    }
}

fn rule_set(sql: &str, key: &str) -> std::result::Result<RuleSet, String> {
    let cfg = rule_config("r", sql, "out", key, None);
    RuleSet::new(&[cfg], &StreamName::new("errors").unwrap(), limits()).map_err(|e| e.to_string())
}

/// The outcome of one rule on one publish as one line of text:
/// `{...}` (the output without lineage) `key=<k>`, `FILTERED`, `NO MATCH`, or `ERROR <kind>: <message>`.
fn outcome(sql: &str, key: &str, topic: &str, payload: &str) -> String {
    let set = match rule_set(sql, key) {
        Ok(s) => s,
        Err(e) => return format!("BAD RULE {e}"),
    };
    let applied = set.apply(&Message {
        topic,
        client_id: CLIENT,
        arrival_ms: ARRIVAL_MS,
        payload: payload.as_bytes(),
    });
    if applied.matched == 0 {
        return "NO MATCH".into();
    }
    if applied.filtered == 1 {
        return "FILTERED".into();
    }
    let out = &applied.outputs[0];
    let mut v: Value = serde_json::from_slice(&out.record.data).unwrap();
    match out.failure {
        None => {
            assert_eq!(out.stream.as_str(), "out");
            let obj = v.as_object_mut().unwrap();
            assert_eq!(obj.remove("_topic"), Some(Value::String(topic.into())));
            assert_eq!(obj.remove("_client_id"), Some(Value::String(CLIENT.into())));
            assert_eq!(obj.remove("_arrival_time"), Some(Value::from(ARRIVAL_MS)));
            format!("{v} key={}", out.record.partition_key)
        }
        Some(_) => {
            assert_eq!(out.stream.as_str(), "errors");
            assert_eq!(out.record.partition_key, CLIENT);
            format!(
                "ERROR {}: {}",
                v["error"]["kind"].as_str().unwrap(),
                v["error"]["message"].as_str().unwrap()
            )
        }
    }
}

/// Rows: (select list and optional WHERE after the FROM, payload, expected).
fn check_select(rows: &[(&str, &str, &str, &str)]) {
    let mut failures = Vec::new();
    for (select, where_, payload, expected) in rows {
        let sql = if where_.is_empty() {
            format!("SELECT {select} FROM 'devices/+/telemetry'")
        } else {
            format!("SELECT {select} FROM 'devices/+/telemetry' WHERE {where_}")
        };
        let got = outcome(&sql, "k", TOPIC, payload);
        let got = got.trim_end_matches(" key=k").to_string();
        if got != *expected {
            failures.push(format!(
                "{sql}\n  payload:  {payload}\n  expected: {expected}\n  got:      {got}"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn select_items() {
    check_select(&[
        ("*", "", r#"{"t":21.5,"id":"a"}"#, r#"{"id":"a","t":21.5}"#),
        ("*", "", "42", r#"{"value":42}"#),
        (
            "*, topic(2) AS device_id",
            "",
            r#"{"t":1}"#,
            r#"{"device_id":"dev-7","t":1}"#,
        ),
        ("t", "", r#"{"t":1,"u":2}"#, r#"{"t":1}"#),
        ("a.b.c", "", r#"{"a":{"b":{"c":true}}}"#, r#"{"c":true}"#),
        ("a.b.c AS deep", "", r#"{"a":{"b":{"c":"x"}}}"#, r#"{"deep":"x"}"#),
        ("a.b AS x", "", r#"{"a":5}"#, "{}"),
        ("missing", "", r#"{"t":1}"#, "{}"),
        ("xs[1] AS second", "", r#"{"xs":[10,20,30]}"#, r#"{"second":20}"#),
        ("xs[9] AS nth", "", r#"{"xs":[10]}"#, "{}"),
        ("\"odd-name\"", "", r#"{"odd-name":3}"#, r#"{"odd-name":3}"#),
        ("t AS \"select\"", "", r#"{"t":3}"#, r#"{"select":3}"#),
        ("*, t * 2 AS t", "", r#"{"t":4}"#, r#"{"t":8}"#),
        (
            "1, 'two', true, false, null",
            "",
            "{}",
            r#"{"_1":1,"_2":"two","_3":true,"_4":false,"_5":null}"#,
        ),
        ("-1.5e2 AS x", "", "{}", r#"{"x":-150.0}"#),
        (
            "topic() AS t, topic(1) AS a, topic(3) AS c, topic(4) AS d",
            "",
            "{}",
            r#"{"a":"devices","c":"telemetry","t":"devices/dev-7/telemetry"}"#,
        ),
        ("topic(2)", "", "{}", r#"{"topic":"dev-7"}"#),
        (
            "clientid() AS c, timestamp() AS ts",
            "",
            "{}",
            r#"{"c":"client-1","ts":1700000000123}"#,
        ),
        ("CLIENTID() AS c", "", "{}", r#"{"c":"client-1"}"#),
    ]);
}

#[test]
fn arithmetic() {
    check_select(&[
        ("1 + 2 * 3 AS x", "", "{}", r#"{"x":7}"#),
        ("(1 + 2) * 3 AS x", "", "{}", r#"{"x":9}"#),
        (
            "7 / 2 AS x, 8 / 2 AS y, 7 % 3 AS z",
            "",
            "{}",
            r#"{"x":3.5,"y":4,"z":1}"#,
        ),
        ("t - 0.5 AS x", "", r#"{"t":2}"#, r#"{"x":1.5}"#),
        ("-t AS x", "", r#"{"t":2}"#, r#"{"x":-2}"#),
        ("t + missing AS x", "", r#"{"t":2}"#, "{}"),
        ("'a' + 'b' AS x", "", "{}", r#"{"x":"ab"}"#),
        (
            "9223372036854775807 + 1 AS x",
            "",
            "{}",
            r#"{"x":9.223372036854776e+18}"#,
        ),
        (
            "t / 0 AS x",
            "",
            r#"{"t":2}"#,
            "ERROR evaluation: division by zero in 2 / 0",
        ),
        (
            "t + 'a' AS x",
            "",
            r#"{"t":2}"#,
            r#"ERROR evaluation: cannot compute number 2 + string "a""#,
        ),
        (
            "-s AS x",
            "",
            r#"{"s":"a"}"#,
            r#"ERROR evaluation: cannot negate string "a""#,
        ),
    ]);
}

#[test]
fn where_conditions() {
    check_select(&[
        ("t", "t > 20", r#"{"t":21}"#, r#"{"t":21}"#),
        ("t", "t > 20", r#"{"t":19}"#, "FILTERED"),
        ("t", "t >= 21 AND t <= 21", r#"{"t":21}"#, r#"{"t":21}"#),
        ("t", "t = 21.0", r#"{"t":21}"#, r#"{"t":21}"#),
        ("t", "t <> 21", r#"{"t":21}"#, "FILTERED"),
        ("t", "t != 22", r#"{"t":21}"#, r#"{"t":21}"#),
        ("t", "s = 'on'", r#"{"t":1,"s":"on"}"#, r#"{"t":1}"#),
        ("t", "s < 'b'", r#"{"t":1,"s":"a"}"#, r#"{"t":1}"#),
        ("t", "s = 1", r#"{"t":1,"s":"1"}"#, "FILTERED"),
        ("t", "t > 1 OR t < 0", r#"{"t":-1}"#, r#"{"t":-1}"#),
        ("t", "NOT t > 1", r#"{"t":0}"#, r#"{"t":0}"#),
        ("t", "NOT (t > 1 AND t < 5)", r#"{"t":3}"#, "FILTERED"),
        ("t", "missing > 1", r#"{"t":3}"#, "FILTERED"),
        ("t", "missing > 1 OR t = 3", r#"{"t":3}"#, r#"{"t":3}"#),
        ("t", "missing > 1 AND t = 4", r#"{"t":3}"#, "FILTERED"),
        ("t", "NOT missing > 1", r#"{"t":3}"#, "FILTERED"),
        ("t", "x IS NULL", r#"{"t":3,"x":null}"#, r#"{"t":3}"#),
        ("t", "x IS NULL", r#"{"t":3}"#, r#"{"t":3}"#),
        ("t", "x IS NULL", r#"{"t":3,"x":0}"#, "FILTERED"),
        ("t", "x IS NOT NULL", r#"{"t":3,"x":0}"#, r#"{"t":3}"#),
        ("t", "x is not null", r#"{"t":3}"#, "FILTERED"),
        ("t", "on", r#"{"t":3,"on":true}"#, r#"{"t":3}"#),
        (
            "t",
            "topic(2) = 'dev-7' AND clientid() = 'client-1'",
            r#"{"t":3}"#,
            r#"{"t":3}"#,
        ),
        ("t", "a.b > 1", r#"{"t":3,"a":{"b":2}}"#, r#"{"t":3}"#),
        ("t", "1 + 1 = 2", "{}", "{}"),
        // Fields of the wrong type are errors with a reason, not silent non-matches.
        (
            "t",
            "t > 'abc'",
            r#"{"t":3}"#,
            r#"ERROR evaluation: WHERE: cannot compare number 3 > string "abc""#,
        ),
        (
            "t",
            "t > 20",
            r#"{"t":"hot"}"#,
            r#"ERROR evaluation: WHERE: cannot compare string "hot" > number 20"#,
        ),
        (
            "t",
            "t > 20",
            r#"{"t":null}"#,
            "ERROR evaluation: WHERE: cannot compare null > number 20",
        ),
        (
            "t",
            "t",
            r#"{"t":3}"#,
            "ERROR evaluation: WHERE: WHERE must be a boolean condition, got number 3",
        ),
        (
            "t",
            "t AND true",
            r#"{"t":3}"#,
            "ERROR evaluation: WHERE: AND needs booleans, got number 3",
        ),
        (
            "t",
            "NOT t",
            r#"{"t":3}"#,
            "ERROR evaluation: WHERE: NOT needs a boolean, got number 3",
        ),
    ]);
}

#[test]
fn payload_failures_go_to_the_error_stream() {
    check_select(&[
        (
            "*",
            "",
            "not json",
            "ERROR payload_not_json: payload is not JSON: expected ident at line 1 column 2",
        ),
        (
            "*",
            "",
            "",
            "ERROR payload_not_json: payload is not JSON: EOF while parsing a value at line 1 column 0",
        ),
        (
            "*",
            "",
            &format!("\"{}\"", "x".repeat(300)),
            "ERROR payload_too_large: payload of 302 bytes is over the limit of 256 bytes",
        ),
        (
            "* AS x",
            "",
            "{}",
            "BAD RULE rule \"r\": sql at position 10: expected FROM, found 'AS'",
        ),
        (
            "*, xs AS a, xs AS b",
            "",
            &format!("{{\"xs\":\"{}\"}}", "y".repeat(200)),
            "ERROR record_too_large: output record of 713 bytes is over the limit of 512 bytes",
        ),
    ]);
}

#[test]
fn error_record_keeps_lineage_and_payload() {
    let set = rule_set("SELECT * FROM '#'", "k").unwrap();
    let payload = [0xff_u8, 0xfe, 0x00];
    let applied = set.apply(&Message {
        topic: "a/b",
        client_id: CLIENT,
        arrival_ms: ARRIVAL_MS,
        payload: &payload,
    });
    let out = &applied.outputs[0];
    assert_eq!(out.failure, Some(FailureKind::PayloadNotJson));
    let v: Value = serde_json::from_slice(&out.record.data).unwrap();
    assert_eq!(v["_topic"], "a/b");
    assert_eq!(v["_client_id"], CLIENT);
    assert_eq!(v["_arrival_time"], ARRIVAL_MS);
    assert_eq!(v["rule"], "r");
    assert_eq!(v["payload_base64"], "//4A");
    assert_eq!(v["payload_bytes"], 3);
    assert_eq!(v["payload_truncated"], false);
}

#[test]
fn partition_key_templates() {
    let rows: &[(&str, &str, &str)] = &[
        ("${topic(2)}", r#"{"t":1}"#, "key=dev-7"),
        ("${clientid()}", r#"{"t":1}"#, "key=client-1"),
        ("${device.id}", r#"{"device":{"id":"d-9"}}"#, "key=d-9"),
        ("${device.id}", r#"{"device":{"id":17}}"#, "key=17"),
        ("dev-${topic(2)}/${n + 1}", r#"{"n":1}"#, "key=dev-dev-7/2"),
        ("fixed", r#"{"t":1}"#, "key=fixed"),
        ("${'}'}", r#"{"t":1}"#, "key=}"),
        (
            "${device.id}",
            r#"{"t":1}"#,
            "ERROR partition_key: a ${...} substitution of the partition key is undefined or null",
        ),
        (
            "${device}",
            r#"{"device":{"id":1}}"#,
            "ERROR partition_key: a ${...} substitution of the partition key is object {\"id\":1}, not a scalar",
        ),
        (
            "${s}",
            r#"{"s":""}"#,
            "ERROR partition_key: partition key of 0 characters is not within 1-256",
        ),
        (
            "${topic(2)",
            "{}",
            "BAD RULE rule \"r\": partition_key at position 1: unterminated ${ in template",
        ),
        (
            "ab${nope(}",
            "{}",
            "BAD RULE rule \"r\": partition_key at position 5: unknown function nope(); known: topic(), topic(n), clientid(), timestamp(), newuuid()",
        ),
        (
            "",
            "{}",
            "BAD RULE rule \"r\": partition_key at position 1: the template is empty",
        ),
    ];
    let mut failures = Vec::new();
    for (template, payload, expected) in rows {
        let got = outcome("SELECT '' AS e FROM 'devices/#'", template, TOPIC, payload);
        let got = got.strip_prefix(r#"{"e":""} "#).unwrap_or(&got).to_string();
        if got != *expected {
            failures.push(format!("{template}\n  expected: {expected}\n  got:      {got}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn parse_errors_have_position_and_reason() {
    let rows: &[(&str, &str)] = &[
        (
            "SELEC * FROM 'a'",
            "at position 1: expected SELECT, found 'SELEC'",
        ),
        ("SELECT * FORM 'a'", "at position 10: expected FROM, found 'FORM'"),
        (
            "SELECT * FROM a",
            "at position 15: expected a single-quoted topic filter after FROM, found 'a'",
        ),
        (
            "SELECT * FROM 'a/#/b'",
            "at position 15: topic filter \"a/#/b\": '#' must be a whole level and the last one",
        ),
        (
            "SELECT * FROM 'a/b+'",
            "at position 15: topic filter \"a/b+\": '+' must be a whole level",
        ),
        ("SELECT * FROM ''", "at position 15: the topic filter is empty"),
        (
            "SELECT * FROM 'a",
            "at position 15: unterminated string starting here",
        ),
        (
            "SELECT * FROM 'a' WHERE",
            "at position 24: expected an expression, found the end of the statement",
        ),
        (
            "SELECT * FROM 'a' WHERE t > ",
            "at position 29: expected an expression, found the end of the statement",
        ),
        (
            "SELECT * FROM 'a' WHERE t > 1 extra",
            "at position 31: unexpected 'extra' after the end of the statement",
        ),
        (
            "SELECT * FROM 'a' WHERE 1 < 2 < 3",
            "at position 31: comparisons do not chain; combine them with AND",
        ),
        (
            "SELECT * FROM 'a' WHERE t IS 3",
            "at position 30: expected NULL, found number 3",
        ),
        (
            "SELECT foo(1) FROM 'a'",
            "at position 8: unknown function foo(); known: topic(), topic(n), clientid(), timestamp(), newuuid()",
        ),
        (
            "SELECT topic(0) FROM 'a'",
            "at position 8: topic(n) takes a literal level number n >= 1",
        ),
        (
            "SELECT topic(x) FROM 'a'",
            "at position 8: topic(n) takes a literal level number n >= 1",
        ),
        (
            "SELECT topic(1, 2) FROM 'a'",
            "at position 8: topic() takes 0 to 1 argument(s), got 2",
        ),
        (
            "SELECT clientid(1) FROM 'a'",
            "at position 8: clientid() takes 0 argument(s), got 1",
        ),
        ("SELECT (1 FROM 'a'", "at position 11: expected ')', found 'FROM'"),
        (
            "SELECT a. FROM 'a'",
            "at position 11: expected a field name after '.', found keyword FROM; quote it (\"FROM\") to use it as a name",
        ),
        (
            "SELECT a[x] FROM 'a'",
            "at position 10: expected an array index, found 'x'",
        ),
        (
            "SELECT a[1.5] FROM 'a'",
            "at position 10: array index 1.5 is not a non-negative integer",
        ),
        (
            "SELECT t AS FROM 'a'",
            "at position 13: FROM is a keyword; quote it (\"FROM\") to use it as a name",
        ),
        (
            "SELECT t AS 3 FROM 'a'",
            "at position 13: expected a name after AS, found number 3",
        ),
        (
            "SELECT 12ab FROM 'a'",
            "at position 8: malformed number starting with \"12\"",
        ),
        ("SELECT t ; FROM 'a'", "at position 10: unexpected character ';'"),
        ("SELECT \"\" FROM 'a'", "at position 8: empty quoted identifier"),
        (
            "SELECT , FROM 'a'",
            "at position 8: expected an expression, found ','",
        ),
    ];
    let mut failures = Vec::new();
    for (sql, expected) in rows {
        let got = match sql::parse_statement(sql) {
            Ok(s) => format!("parsed: {s:?}"),
            Err(e) => e.to_string(),
        };
        if got != *expected {
            failures.push(format!("{sql}\n  expected: {expected}\n  got:      {got}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn keywords_are_case_insensitive_and_precedence_holds() {
    let a = sql::parse_statement("select * from 'a' where not x = 1 or y is not null and z < 2").unwrap();
    let b = sql::parse_statement("SELECT * FROM 'a' WHERE (NOT (x = 1)) OR ((y IS NOT NULL) AND (z < 2))")
        .unwrap();
    assert_eq!(a, b);
    let c = sql::parse_statement("SELECT 1 - 2 - 3 AS x FROM 'a'").unwrap();
    let d = sql::parse_statement("SELECT (1 - 2) - 3 AS x FROM 'a'").unwrap();
    assert_eq!(c, d);
}

#[test]
fn newuuid_is_fresh_per_record() {
    let set = rule_set("SELECT newuuid() AS id FROM '#'", "${newuuid()}").unwrap();
    let msg = Message {
        topic: "a",
        client_id: CLIENT,
        arrival_ms: 0,
        payload: b"{}",
    };
    let one = set.apply(&msg).outputs.remove(0);
    let two = set.apply(&msg).outputs.remove(0);
    let id = |o: &Output| serde_json::from_slice::<Value>(&o.record.data).unwrap()["id"].clone();
    assert_ne!(id(&one), id(&two));
    assert_eq!(id(&one).as_str().unwrap().len(), 36);
    assert_ne!(one.record.partition_key, two.record.partition_key);
}

#[test]
fn several_rules_match_one_publish() {
    let cfg =
        |name: &str, sql: &str, stream: &str| rule_config(name, sql, stream, "${topic(2)}", Some("errs"));
    let set = RuleSet::new(
        &[
            cfg("all", "SELECT * FROM 'devices/#'", "raw"),
            cfg(
                "hot",
                "SELECT t FROM 'devices/+/telemetry' WHERE t > 30",
                "alerts",
            ),
            cfg("other", "SELECT * FROM 'other/#'", "other"),
            cfg(
                "broken",
                "SELECT * FROM 'devices/+/telemetry' WHERE t > 'x'",
                "never",
            ),
        ],
        &StreamName::new("errors").unwrap(),
        limits(),
    )
    .unwrap();
    let applied = set.apply(&Message {
        topic: TOPIC,
        client_id: CLIENT,
        arrival_ms: 1,
        payload: br#"{"t":31}"#,
    });
    assert_eq!(applied.matched, 3);
    let got: Vec<(&str, &str, Option<FailureKind>)> = applied
        .outputs
        .iter()
        .map(|o| (o.stream.as_str(), o.record.partition_key.as_str(), o.failure))
        .collect();
    assert_eq!(
        got,
        vec![
            ("raw", "dev-7", None),
            ("alerts", "dev-7", None),
            ("errs", CLIENT, Some(FailureKind::Evaluation)),
        ]
    );
    assert_eq!(set.streams().len(), 5);
    assert!(set.any_matches("other/x"));
    assert!(!set.any_matches("nobody/x"));
    let dup = RuleSet::new(
        &[
            cfg("a", "SELECT * FROM '#'", "s"),
            cfg("a", "SELECT * FROM '#'", "s"),
        ],
        &StreamName::new("errors").unwrap(),
        limits(),
    );
    assert!(dup.unwrap_err().to_string().contains("two rules are named \"a\""));
}

#[test]
fn topic_filters() {
    let rows: &[(&str, &str, bool)] = &[
        ("a/b", "a/b", true),
        ("a/b", "a/c", false),
        ("a/+", "a/b", true),
        ("a/+", "a/b/c", false),
        ("a/+/c", "a/b/c", true),
        ("a/#", "a", true),
        ("a/#", "a/b/c", true),
        ("#", "a/b", true),
        ("+/+", "a/b", true),
        ("+", "a/b", false),
        ("a/+", "a/", true),
        ("#", "$SYS/x", false),
        ("+/x", "$SYS/x", false),
        ("$SYS/#", "$SYS/x", true),
        ("a", "A", false),
    ];
    for (filter, topic, expected) in rows {
        assert_eq!(topic_matches(filter, topic), *expected, "{filter} vs {topic}");
    }
}

/// The byte-level matcher agrees with the MQTT definition written level by level, over every filter and topic of
/// up to four levels drawn from a small alphabet (empty levels, `$` topics and wildcards included).
#[test]
fn topic_matching_agrees_with_the_level_by_level_definition() {
    fn by_levels(filter: &str, topic: &str) -> bool {
        if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
            return false;
        }
        let mut t = topic.split('/');
        for f in filter.split('/') {
            if f == "#" {
                return true;
            }
            match t.next() {
                Some(level) if f == "+" || f == level => {}
                _ => return false,
            }
        }
        t.next().is_none()
    }
    fn all(alphabet: &[&str], levels: usize) -> Vec<String> {
        let mut out: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
        let mut last = out.clone();
        for _ in 1..levels {
            last = last
                .iter()
                .flat_map(|p| alphabet.iter().map(move |a| format!("{p}/{a}")))
                .collect();
            out.extend(last.iter().cloned());
        }
        out
    }
    let topics = all(&["a", "b", "", "$S", "ab"], 4);
    let filters: Vec<String> = all(&["a", "+", "", "ab", "$S"], 3)
        .into_iter()
        .flat_map(|f| [f.clone(), format!("{f}/#")])
        .chain(["#".to_string()])
        .collect();
    let mut checked = 0;
    for f in &filters {
        for t in &topics {
            assert_eq!(topic_matches(f, t), by_levels(f, t), "{f:?} vs {t:?}");
            checked += 1;
        }
    }
    assert!(checked > 100_000, "{checked}");
}

/// `SELECT *` without WHERE copies the payload's bytes (no `Value` tree); its records must mean exactly what the
/// general path (`WHERE true` forces it) makes of the same publish, and it must fall back where they would differ.
#[test]
fn verbatim_select_star_matches_the_general_path() {
    // (payload, whether the fast path may take it)
    let payloads: &[(&str, bool)] = &[
        (r#"{"b":1,"a":2.5,"s":"x"}"#, true),
        ("{}", true),
        ("  { \"t\" : 1 }  \n", true),
        (
            r#"{"n":{"x":[1,2,{"y":null}],"z":true},"u":"\u00e9\u2028","e":"q\"\\/"}"#,
            true,
        ),
        (
            r#"{"big":18446744073709551615,"neg":-9223372036854775808,"f":1e300,"g":-0.0}"#,
            true,
        ),
        (r#"{"a\u0062":1}"#, false),
        (r#"{"a":1,"a":2}"#, false),
        (r#"{"_topic":"spoofed","t":1}"#, false),
        (r#"{"_arrival_time":0}"#, false),
        (r#"{"device_id":"mine","t":1}"#, true),
        ("42", false),
        (r#""text""#, false),
        ("[1,2]", false),
        ("null", false),
        (r#"{"t":1e400}"#, false),
        (r#"{"t":1"#, false),
        (r#"{"t":1} x"#, false),
        ("{\"t\":\"\u{fffd}\"}", true),
        ("", false),
    ];
    // Objects with more keys than are kept inline (16) and than are compared pairwise (32), with and without a
    // repeated key, at and past those bounds.
    let names: Vec<String> = ('a'..='z').chain('A'..='N').map(String::from).collect();
    let object = |keys: &[String]| {
        let fields: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("\"{k}\":{}", i % 10))
            .collect();
        format!("{{{}}}", fields.join(","))
    };
    let mut many: Vec<(String, bool)> = Vec::new();
    for n in [16, 17, 20, 33, 39] {
        many.push((object(&names[..n]), true));
        let mut repeated = names[..n].to_vec();
        repeated.push(names[n - 1].clone());
        many.push((object(&repeated), false));
        let mut first_again = names[..n].to_vec();
        first_again.push(names[0].clone());
        many.push((object(&first_again), false));
    }
    let many: Vec<(&str, bool)> = many.iter().map(|(p, fast)| (p.as_str(), *fast)).collect();
    for select in ["*", "*, topic(2) AS device_id, 1 + 2 AS three, topic(9) AS gone"] {
        verbatim_cases(select, payloads);
        verbatim_cases(select, &many);
    }
    for select in [
        "topic(2) AS d, *",
        "*, t AS t2",
        "*, topic(1) AS _topic",
        "*, 1 AS a, 2 AS a",
    ] {
        let set = rule_set(&format!("SELECT {select} FROM '#'"), "k").unwrap();
        assert!(!set.rules()[0].verbatim, "{select}");
    }
    assert!(!rule_set("SELECT * FROM '#'", "${t}").unwrap().rules()[0].verbatim);
}

fn verbatim_cases(select: &str, payloads: &[(&str, bool)]) {
    let verbatim = rule_set(&format!("SELECT {select} FROM '#'"), "${topic(2)}").unwrap();
    let general = rule_set(&format!("SELECT {select} FROM '#' WHERE true"), "${topic(2)}").unwrap();
    assert!(verbatim.rules()[0].verbatim && !general.rules()[0].verbatim);
    let with_exprs = select != "*";
    let mut cases: Vec<(Vec<u8>, bool)> = payloads
        .iter()
        .map(|(p, fast)| (p.as_bytes().to_vec(), *fast))
        .collect();
    cases.push((vec![b'{', b'"', b't', b'"', b':', b'"', 0xff, b'"', b'}'], false));
    cases.push((format!("{{\"t\":\"{}\"}}", "y".repeat(300)).into_bytes(), false));
    for (payload, fast) in &cases {
        let fast = *fast && !(with_exprs && payload.starts_with(br#"{"device_id""#));
        let msg = Message {
            topic: TOPIC,
            client_id: "client \"1\"",
            arrival_ms: ARRIVAL_MS,
            payload,
        };
        let (v, g) = (verbatim.apply(&msg), general.apply(&msg));
        let shown = String::from_utf8_lossy(payload);
        assert_eq!((v.matched, v.filtered, v.outputs.len()), (1, 0, 1), "{shown}");
        assert_eq!(g.outputs.len(), 1, "{shown}");
        let (vo, go) = (&v.outputs[0], &g.outputs[0]);
        assert_eq!(vo.failure, go.failure, "{shown}");
        assert_eq!(vo.stream, go.stream, "{shown}");
        assert_eq!(vo.record.partition_key, go.record.partition_key, "{shown}");
        let mut vj: Value = serde_json::from_slice(&vo.record.data).unwrap();
        let mut gj: Value = serde_json::from_slice(&go.record.data).unwrap();
        if vo.failure.is_some() {
            // Error records name the rule's error; the reason texts come from the same parse.
            vj["error"]["message"] = Value::Null;
            gj["error"]["message"] = Value::Null;
        }
        assert_eq!(vj, gj, "{shown}");
        if fast {
            let body = std::str::from_utf8(payload)
                .unwrap()
                .trim_end()
                .strip_suffix('}')
                .unwrap();
            assert!(vo.record.data.starts_with(body.as_bytes()), "{shown}");
        } else {
            assert_eq!(
                vo.record.data, go.record.data,
                "{shown}: the general path decides"
            );
        }
    }
    if with_exprs {
        return;
    }
    // The fast path really ran: the payload's own bytes (key order, spelling) lead the record.
    let msg = Message {
        topic: TOPIC,
        client_id: CLIENT,
        arrival_ms: ARRIVAL_MS,
        payload: br#"{"b":1,"a":2.50}"#,
    };
    let out = &verbatim.apply(&msg).outputs[0];
    assert_eq!(
        std::str::from_utf8(&out.record.data).unwrap(),
        r#"{"b":1,"a":2.50,"_topic":"devices/dev-7/telemetry","_client_id":"client-1","_arrival_time":1700000000123}"#
    );
}

/// Keys made of the publish's topic levels and client id (rendered without a JSON value) come out as evaluating
/// every `${...}` would give them, undefined levels included.
#[test]
fn keys_from_the_publish_render_as_evaluated() {
    let evaluated = |t: &Template, ctx: &Context<'_>| -> std::result::Result<String, EvalError> {
        let mut out = String::new();
        for part in &t.parts {
            match part {
                TemplatePart::Text(s) => out.push_str(s),
                TemplatePart::Expr(e) => match eval::eval(e, &Value::Null, ctx)? {
                    Some(Value::String(s)) => out.push_str(&s),
                    _ => {
                        return Err(EvalError(
                            "a ${...} substitution of the partition key is undefined or null".into(),
                        ));
                    }
                },
            }
        }
        Ok(out)
    };
    let templates = [
        "${topic(2)}",
        "${topic()}",
        "${clientid()}",
        "a-${topic(1)}-${topic(3)}",
        "${topic(9)}",
        "${clientid()}/${topic(2)}",
    ];
    let mut fast_paths = 0;
    for template in templates {
        let t = Template::parse(template).unwrap();
        for topic in ["devices/d1/telemetry", "a//b", "one", "x/y"] {
            let ctx = Context {
                topic,
                client_id: "c-1",
                arrival_ms: 5,
            };
            assert_eq!(
                t.render(&Value::Null, &ctx),
                evaluated(&t, &ctx),
                "{template} on {topic}"
            );
        }
        fast_paths += t
            .parts
            .iter()
            .filter(|p| matches!(p, TemplatePart::Expr(e) if context_text(e, &Context { topic: "t", client_id: "c", arrival_ms: 0 }).is_some()))
            .count();
    }
    assert_eq!(fast_paths, 8);
}

/// Lineage strings are written exactly as `serde_json` writes them, whatever they hold.
#[test]
fn json_strings_are_written_as_serde_json_writes_them() {
    for s in [
        "devices/d1/telemetry",
        "",
        "quote\"d",
        "back\\slash",
        "tab\tnew\nline\u{1}",
        "del\u{7f}",
        "é/漢字/🙂",
        "\u{2028}",
    ] {
        let mut out = Vec::new();
        write_json_str(&mut out, s);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(s).unwrap(),
            "{s:?}"
        );
    }
}

/// A connection's cache carried across publishes (topics, clients and arrival times changing and coming back)
/// gives exactly what applying each publish with a fresh cache gives.
#[test]
fn one_cache_across_publishes_gives_what_a_fresh_apply_gives() {
    let rule = |name: &str, sql: &str, key: &str| rule_config(name, sql, "out", key, None);
    let set = RuleSet::new(
        &[
            rule("plain", "SELECT * FROM 'devices/+/telemetry'", "${topic(2)}"),
            rule(
                "extra",
                "SELECT *, topic(1) AS first FROM 'devices/#'",
                "${topic(3)}-${clientid()}",
            ),
            rule(
                "clocked",
                "SELECT * FROM 'devices/+/telemetry'",
                "k${timestamp()}",
            ),
            // After this one parses a payload, later verbatim rules take the general path for that publish.
            rule("filtered", "SELECT t FROM '#' WHERE t > 1", "${clientid()}"),
        ],
        &StreamName::new("errors").unwrap(),
        limits(),
    )
    .unwrap();
    let topics = [
        TOPIC,
        TOPIC,
        "devices/d2/telemetry",
        "devices/a\"b/telemetry",
        "devices/short",
        TOPIC,
        "elsewhere",
    ];
    let payloads = [
        r#"{"t":2}"#,
        r#"{"t":0,"u":"x"}"#,
        "not json",
        "[1]",
        r#"{"_topic":1}"#,
    ];
    let mut cache = TopicCache::default();
    let mut compared = 0;
    // Each topic twice in a row, the arrival time changing every publish and the client now and then.
    for i in 0..60 {
        let topic = topics[(i / 2) % topics.len()];
        let msg = Message {
            topic,
            client_id: if (i / 5) % 2 == 0 { CLIENT } else { "client-2" },
            arrival_ms: ARRIVAL_MS + i as i64,
            payload: payloads[i % payloads.len()].as_bytes(),
        };
        let (cached, fresh) = (set.apply_cached(&msg, &mut cache), set.apply(&msg));
        assert_eq!(
            (cached.matched, cached.filtered),
            (fresh.matched, fresh.filtered),
            "{i}"
        );
        assert_eq!(cached.outputs.len(), fresh.outputs.len(), "{i}");
        for (c, f) in cached.outputs.iter().zip(&fresh.outputs) {
            assert_eq!(
                (c.rule, &c.stream, c.failure),
                (f.rule, &f.stream, f.failure),
                "{i}"
            );
            assert_eq!(c.record.partition_key, f.record.partition_key, "{i}");
            assert_eq!(c.record.data, f.record.data, "{i}: {topic}");
            compared += 1;
        }
    }
    assert!(compared > 90, "only {compared} outputs compared");
}
