//! Number and command formatting shared by the reports and the plots.

use crate::config::Config;

/// Fraction -> "9.9%".
pub fn pct(frac: f64) -> String {
    format!("{:.1}%", frac * 100.0)
}

/// 56602 -> "56,602".
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// p-values with enough digits to compare with 0.05.
pub fn fmt_p(p: f64) -> String {
    if p < 1e-4 {
        "< 0.0001".to_string()
    } else if p < 0.01 {
        format!("{p:.4}")
    } else {
        format!("{p:.2}")
    }
}

/// Signed percent change from a to b.
pub fn change_pct(a: f64, b: f64) -> String {
    format!("{:+.1}%", (b / a - 1.0) * 100.0)
}

/// Shell-safe single-quoting when a word needs it.
pub fn shell_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_=.,-/:+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `--set key=value` flags for every config field that differs from the
/// defaults, except `skip`: with them a command reruns the same conditions.
pub fn set_flags(config: &Config, skip: &[&str]) -> String {
    let (Ok(cur), Ok(def)) = (
        toml::Table::try_from(config),
        toml::Table::try_from(Config::default()),
    ) else {
        return String::new();
    };
    let mut flags = String::new();
    for (key, value) in &cur {
        if skip.contains(&key.as_str()) || def.get(key) == Some(value) {
            continue;
        }
        flags += &format!(" --set {}", shell_word(&format!("{key}={value}")));
    }
    flags
}

/// The command that reruns this sweep's conditions with `key` taking each value.
pub fn compare_command(config: &Config, key: &str, values: &[String]) -> String {
    format!(
        "newllm compare --vary {}{}",
        shell_word(&format!("{key}={}", values.join(","))),
        set_flags(config, &[key])
    )
}

/// The command that reruns this sweep's conditions with `changes` applied.
pub fn set_command(config: &Config, changes: &[(&str, &str)]) -> String {
    let keys: Vec<&str> = changes.iter().map(|(k, _)| *k).collect();
    let mut cmd = "newllm sweep".to_string();
    for (k, v) in changes {
        cmd += &format!(" --set {}", shell_word(&format!("{k}={v}")));
    }
    cmd + &set_flags(config, &keys)
}

/// The command that reruns this sweep's conditions with other sample counts.
pub fn sweep_command(config: &Config, sample_counts: &[usize]) -> String {
    let counts: Vec<String> = sample_counts.iter().map(|s| s.to_string()).collect();
    format!(
        "newllm sweep --set {}{}",
        shell_word(&format!("sample_counts=[{}]", counts.join(", "))),
        set_flags(config, &["sample_counts"])
    )
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian.
pub fn civil_date(days: i64) -> (i64, u32, u32) {
    // Shift to eras of 400 years starting 0000-03-01 so leap days fall last.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_date(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        s / 3600,
        (s % 3600) / 60
    )
}

/// A serde enum as its plain config spelling ("sequential").
pub fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// 56602 -> "57K", 1.2e6 -> "1.2M": readable tick labels on token axes.
pub fn short_number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.0}K", v / 1e3)
    } else if a >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
