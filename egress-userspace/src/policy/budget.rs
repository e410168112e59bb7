//! Upload budgets (`budget:` on an allow rule): at most so many bytes of
//! payload to the rule's destinations per window of time. Sizes are bytes
//! or a number with a unit (`500 KB`, `10 MiB`); windows are seconds or a
//! number with `s`, `m`, `h` or `d`.

use std::{str::FromStr, time::Duration};

use serde::Deserialize;

/// At most `bytes` of payload per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    pub bytes: u64,
    pub window: Duration,
}

/// Longest window: a month.
const MAX_WINDOW: Duration = Duration::from_secs(30 * 86_400);

/// `budget:` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    upload: Size,
    per: Window,
}

impl From<RawBudget> for Budget {
    fn from(r: RawBudget) -> Budget {
        Budget {
            bytes: r.upload.0,
            window: r.per.0,
        }
    }
}

/// A number of bytes.
pub struct Size(pub u64);

/// A number and what is left after it (spaces trimmed).
fn number_and_unit(s: &str) -> Option<(f64, &str)> {
    let t = s.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let n: f64 = t[..end].parse().ok()?;
    Some((n, t[end..].trim()))
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        let bad = || {
            format!("`{s}` is not a size: write bytes (`1048576`) or a number with B, KB, MB, GB, KiB, MiB or GiB (`10 MiB`)")
        };
        let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
        let scale: u64 = match unit {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "MB" => 1000 * 1000,
            "GB" => 1000 * 1000 * 1000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(bad()),
        };
        let bytes = (n * scale as f64) as u64;
        if bytes == 0 {
            return Err(format!(
                "`{s}`: a budget of nothing would refuse every connection; remove the rule instead"
            ));
        }
        Ok(Size(bytes))
    }
}

/// A window of time, from a second to a month.
pub struct Window(pub Duration);

impl FromStr for Window {
    type Err = String;
    fn from_str(s: &str) -> Result<Window, String> {
        let bad = || {
            format!("`{s}` is not a window: write seconds (`3600`) or a number with s, m, h or d (`1h`)")
        };
        let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
        let secs = match unit {
            "" | "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86_400.0,
            _ => return Err(bad()),
        };
        let window = Duration::from_secs_f64(secs);
        if window < Duration::from_secs(1) || window > MAX_WINDOW {
            return Err(format!("`{s}`: a budget's window runs from 1s to 30d"));
        }
        Ok(Window(window))
    }
}

/// Sizes and windows may be written as plain numbers.
macro_rules! deserialize_number_or_text {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    Number(u64),
                    Text(String),
                }
                let text = match Raw::deserialize(d)? {
                    Raw::Number(n) => n.to_string(),
                    Raw::Text(t) => t,
                };
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

deserialize_number_or_text!(Size);
deserialize_number_or_text!(Window);

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} per {}s", human(self.bytes), self.window.as_secs())
    }
}

/// Bytes as people read them: `812 B`, `12.4 KiB`, `3.0 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_windows() {
        assert_eq!("10 MiB".parse::<Size>().unwrap().0, 10 << 20);
        assert_eq!("500KB".parse::<Size>().unwrap().0, 500_000);
        assert_eq!("1048576".parse::<Size>().unwrap().0, 1 << 20);
        assert!("10 MB/s".parse::<Size>().is_err());
        assert!("0".parse::<Size>().is_err());
        assert_eq!("1h".parse::<Window>().unwrap().0, Duration::from_secs(3600));
        assert_eq!("90".parse::<Window>().unwrap().0, Duration::from_secs(90));
        assert!("0.5s".parse::<Window>().is_err());
        assert!("31d".parse::<Window>().is_err());
        assert!("1 week".parse::<Window>().is_err());
        assert_eq!(human(812), "812 B");
        assert_eq!(human(12_700), "12.4 KiB");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
