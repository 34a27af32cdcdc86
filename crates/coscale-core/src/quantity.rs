//! Kubernetes resource quantities (`"1500m"`, `"2k"`, `"1Gi"`, `"1e3"`).
//!
//! A quantity is held exactly as a whole number of nano-units, which covers every
//! suffix Kubernetes accepts (`n` up to `E`/`Ei`). Conversions round up, like
//! `resource.Quantity.Value()` and `MilliValue()` upstream.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const NANO: i128 = 1_000_000_000;

/// An exact Kubernetes quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity {
    nanos: i128,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {input:?}: {why} (expected a number with an optional suffix such as 500m, 2k, 1Gi or 1e3)")]
pub struct QuantityError {
    pub input: String,
    pub why: &'static str,
}

fn div_ceil(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b != 0 && ((a > 0) == (b > 0)) {
        q + 1
    } else {
        q
    }
}

impl Quantity {
    pub const ZERO: Quantity = Quantity { nanos: 0 };

    pub fn from_nanos(nanos: i128) -> Self {
        Self { nanos }
    }
    pub fn from_milli(milli: i64) -> Self {
        Self {
            nanos: i128::from(milli) * 1_000_000,
        }
    }
    pub fn from_units(units: i64) -> Self {
        Self {
            nanos: i128::from(units) * NANO,
        }
    }
    /// The nearest quantity to `v`, at milli precision rounded up (as the HPA does).
    pub fn from_f64_milli_ceil(v: f64) -> Self {
        let milli = (v * 1000.0).ceil();
        let milli = if milli.is_finite() {
            milli.clamp(i64::MIN as f64, i64::MAX as f64) as i64
        } else {
            0
        };
        Self::from_milli(milli)
    }
    pub fn nanos(&self) -> i128 {
        self.nanos
    }
    /// Value in milli-units, rounded up (`MilliValue()`), saturating at i64 bounds.
    pub fn milli_value(&self) -> i64 {
        saturate(div_ceil(self.nanos, 1_000_000))
    }
    /// Value in whole units, rounded up (`Value()`), saturating at i64 bounds.
    pub fn value(&self) -> i64 {
        saturate(div_ceil(self.nanos, NANO))
    }
    /// Whole units as bytes for memory sizes; negative quantities give 0.
    pub fn as_bytes(&self) -> u64 {
        let v = div_ceil(self.nanos, NANO);
        if v <= 0 {
            0
        } else {
            u64::try_from(v).unwrap_or(u64::MAX)
        }
    }
    pub fn as_f64(&self) -> f64 {
        self.nanos as f64 / NANO as f64
    }
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }
}

fn saturate(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// (multiplier numerator in nanos) for each suffix.
fn suffix_nanos(suffix: &str) -> Option<i128> {
    Some(match suffix {
        "" => NANO,
        "n" => 1,
        "u" => 1_000,
        "m" => 1_000_000,
        "k" => NANO * 1_000,
        "M" => NANO * 1_000_000,
        "G" => NANO * 1_000_000_000,
        "T" => NANO * 1_000_000_000_000,
        "P" => NANO * 1_000_000_000_000_000,
        "E" => NANO * 1_000_000_000_000_000_000,
        "Ki" => NANO << 10,
        "Mi" => NANO << 20,
        "Gi" => NANO << 30,
        "Ti" => NANO << 40,
        "Pi" => NANO << 50,
        "Ei" => NANO << 60,
        _ => return None,
    })
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why| QuantityError {
            input: input.to_owned(),
            why,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        let (neg, rest) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, suffix) = rest.split_at(num_end);
        if num.is_empty() || num == "." {
            return Err(err("no digits"));
        }
        let mut parts = num.splitn(2, '.');
        let int_part = parts.next().unwrap_or("");
        let frac_part = parts.next().unwrap_or("");
        if frac_part.contains('.') {
            return Err(err("more than one decimal point"));
        }
        // mantissa = digits as an integer, scale = number of fractional digits
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 36 {
            return Err(err("too many digits"));
        }
        let mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| err("not a number"))?
        };
        let mut scale = frac_part.len() as i32; // value = mantissa * 10^-scale * suffix
        let mult: i128 =
            if let Some(exp) = suffix.strip_prefix(['e', 'E']).filter(|e| !e.is_empty()) {
                let e: i32 = exp.parse().map_err(|_| err("bad exponent"))?;
                if !(-30..=30).contains(&e) {
                    return Err(err("exponent out of range"));
                }
                scale -= e;
                NANO
            } else {
                suffix_nanos(suffix).ok_or_else(|| err("unknown suffix"))?
            };
        let mut v = mantissa.checked_mul(mult).ok_or_else(|| err("too large"))?;
        // apply 10^-scale, rounding up (away from zero for positives) like Kubernetes
        if scale > 0 {
            let p = 10i128
                .checked_pow(scale as u32)
                .ok_or_else(|| err("too many fractional digits"))?;
            v = div_ceil(v, p);
        } else if scale < 0 {
            let p = 10i128
                .checked_pow((-scale) as u32)
                .ok_or_else(|| err("too large"))?;
            v = v.checked_mul(p).ok_or_else(|| err("too large"))?;
        }
        Ok(Self {
            nanos: if neg { -v } else { v },
        })
    }
}

impl fmt::Display for Quantity {
    /// Canonical form with the largest exact decimal suffix among n, u, m, "" (as the
    /// custom metrics API prints values: `1500m`, `2`, `250u`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.nanos;
        if n % NANO == 0 {
            write!(f, "{}", n / NANO)
        } else if n % 1_000_000 == 0 {
            write!(f, "{}m", n / 1_000_000)
        } else if n % 1_000 == 0 {
            write!(f, "{}u", n / 1_000)
        } else {
            write!(f, "{n}n")
        }
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    /// Accepts a string (`"1Gi"`) or a bare number (`1073741824`, `0.5`), as Kubernetes does.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            F(f64),
        }
        let text = match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            Raw::F(f) => f.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_every_suffix_kind() {
        assert_eq!(q("1500m").milli_value(), 1500);
        assert_eq!(q("1.5").milli_value(), 1500);
        assert_eq!(q("2k").value(), 2000);
        assert_eq!(q("1Gi").as_bytes(), 1 << 30);
        assert_eq!(q("100Ki").as_bytes(), 102_400);
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("1E3").value(), 1000);
        assert_eq!(q("5M").as_bytes(), 5_000_000);
        assert_eq!(q("250n").nanos(), 250);
        assert_eq!(q("-2").value(), -2);
        assert_eq!(q("0").value(), 0);
    }

    #[test]
    fn conversions_round_up_like_kubernetes() {
        assert_eq!(q("1m").value(), 1);
        assert_eq!(q("1n").milli_value(), 1);
        assert_eq!(q("0.0001").milli_value(), 1);
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for bad in ["", "abc", "1.2.3", "12x", "1Qi", ".", "1e", "--1"] {
            assert!(bad.parse::<Quantity>().is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn displays_canonically() {
        assert_eq!(q("1.5").to_string(), "1500m");
        assert_eq!(q("2k").to_string(), "2000");
        assert_eq!(q("250u").to_string(), "250u");
        assert_eq!(Quantity::from_milli(3000).to_string(), "3");
    }

    #[test]
    fn deserializes_strings_and_numbers() {
        let v: Vec<Quantity> = serde_json::from_str(r#"["1Gi", 1024, 0.5]"#).unwrap_or_default();
        assert_eq!(v, vec![q("1Gi"), q("1024"), q("500m")]);
    }
}
