//! A strict parser of the Prometheus text exposition format (0.0.4), for checking what
//! `/metrics` serves: every line must be a `# HELP`, a `# TYPE` or a sample; every sample
//! must belong to a family whose `# TYPE` came first, with its lines together; names, label
//! names, escapes and values must be well formed; histograms must have cumulative buckets
//! ending in `le="+Inf"` equal to `_count`. Any violation is an error naming the line.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One metric family.
#[derive(Debug, Clone, Default)]
pub struct Family {
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

/// A parsed scrape.
#[derive(Debug, Default)]
pub struct Scrape {
    pub families: HashMap<String, Family>,
}

fn valid_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    let first_ok = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
    matches!(chars.next(), Some(c) if first_ok(c))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected '{'")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !valid_name(name, false) {
            return Err(format!("invalid label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("invalid escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
    let name = &line[..name_end];
    if !valid_name(name, true) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end..])?
    } else {
        (BTreeMap::new(), &line[name_end..])
    };
    let mut parts = rest.trim_start_matches(' ').split(' ');
    let value = parts.next().ok_or("missing value")?;
    let value = parse_value(value).ok_or(format!("invalid value {value:?}"))?;
    if let Some(ts) = parts.next()
        && ts.parse::<i64>().is_err()
    {
        return Err(format!("invalid timestamp {ts:?}"));
    }
    if parts.next().is_some() {
        return Err("trailing text after the sample".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The family a sample name belongs to, for its type.
fn family_of<'a>(sample: &'a str, declared: &HashMap<String, Family>) -> Option<&'a str> {
    if declared.contains_key(sample) {
        return Some(sample);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && declared.get(base).is_some_and(|f| f.kind == "histogram")
        {
            return Some(base);
        }
    }
    None
}

impl Scrape {
    /// Parses a whole scrape strictly.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut scrape = Scrape::default();
        let mut current: Option<String> = None;
        let mut closed: Vec<String> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let err = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut parts = rest.splitn(3, ' ');
                let (keyword, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let text = parts.next().unwrap_or("");
                if !valid_name(name, true) {
                    return Err(err(format!("invalid name {name:?}")));
                }
                if current.as_deref() != Some(name) {
                    if closed.iter().any(|c| c == name) {
                        return Err(err("family lines are not together".into()));
                    }
                    if let Some(c) = current.take() {
                        closed.push(c);
                    }
                    current = Some(name.to_owned());
                }
                let family = scrape.families.entry(name.to_owned()).or_default();
                match keyword {
                    "HELP" if family.help.is_none() => family.help = Some(text.to_owned()),
                    "TYPE" if family.kind.is_empty() => {
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&text)
                        {
                            return Err(err(format!("unknown type {text:?}")));
                        }
                        if !family.samples.is_empty() {
                            return Err(err("TYPE after samples".into()));
                        }
                        family.kind = text.to_owned();
                    }
                    _ => return Err(err("unexpected or repeated comment".into())),
                }
                continue;
            }
            let sample = parse_sample(line).map_err(&err)?;
            let family = family_of(&sample.name, &scrape.families)
                .ok_or_else(|| err("sample without a TYPE before it".into()))?
                .to_owned();
            if current.as_deref() != Some(family.as_str()) {
                return Err(err("sample outside its family's lines".into()));
            }
            let f = scrape.families.get_mut(&family).expect("family exists");
            if f.kind == "counter" && !sample.name.ends_with("_total") {
                return Err(err("counter sample without _total".into()));
            }
            f.samples.push(sample);
        }
        for (name, f) in &scrape.families {
            if f.kind.is_empty() {
                return Err(format!("family {name} has no TYPE"));
            }
            if f.kind == "histogram" {
                check_histogram(name, f)?;
            }
        }
        Ok(scrape)
    }

    /// The value of the sample `name` whose labels include `labels`, if exactly one matches.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples(name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        match matching.as_slice() {
            [v] => Some(*v),
            _ => None,
        }
    }

    /// Every sample named `name`.
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.families
            .values()
            .flat_map(|f| f.samples.iter())
            .filter(move |s| s.name == name)
    }
}

/// A histogram's label set without `le`.
type LabelKey = Vec<(String, String)>;

/// Buckets cumulative per label set, the last `+Inf`, equal to `_count`.
fn check_histogram(name: &str, f: &Family) -> Result<(), String> {
    let mut groups: BTreeMap<LabelKey, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<LabelKey, f64> = BTreeMap::new();
    for s in &f.samples {
        let mut key: LabelKey = s
            .labels
            .iter()
            .filter(|(k, _)| *k != "le")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        key.sort();
        if s.name.ends_with("_bucket") {
            let le = s
                .labels
                .get("le")
                .and_then(|l| parse_value(l))
                .ok_or(format!("{name}: bucket without a valid le"))?;
            groups.entry(key).or_default().push((le, s.value));
        } else if s.name.ends_with("_count") {
            counts.insert(key, s.value);
        }
    }
    for (key, buckets) in groups {
        let mut last = (f64::NEG_INFINITY, 0.0);
        for &(le, v) in &buckets {
            if le <= last.0 || v < last.1 {
                return Err(format!("{name}{key:?}: buckets not cumulative"));
            }
            last = (le, v);
        }
        if last.0 != f64::INFINITY || counts.get(&key) != Some(&last.1) {
            return Err(format!(
                "{name}{key:?}: +Inf bucket missing or not equal to _count"
            ));
        }
    }
    Ok(())
}
