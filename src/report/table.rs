//! Human tables from outcome records.

use std::collections::BTreeMap;

use super::Outcome;

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// The `q` quantile (0..=1) by the nearest-rank method.
pub fn quantile(mut values: Vec<f64>, q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

/// One row per path: successes, and medians over the successful tries of
/// the phase times and bytes.
pub fn by_path(records: &[Outcome]) -> String {
    let mut groups: BTreeMap<String, Vec<&Outcome>> = BTreeMap::new();
    for r in records {
        let name = serde_json::to_value(r.path)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        groups.entry(name).or_default().push(r);
    }
    let mut out = format!(
        "{:<12} {:>7} {:>9} {:>11} {:>11} {:>12} {:>12}\n",
        "path", "ok", "tcp ms", "bip324 ms", "verack ms", "coord bytes", "direct bytes"
    );
    for (path, rs) in groups {
        let ok: Vec<&&Outcome> = rs.iter().filter(|r| r.ok).collect();
        let med =
            |f: &dyn Fn(&Outcome) -> Option<f64>| median(ok.iter().filter_map(|r| f(r)).collect());
        // Stock DCUtR has no verack: its first application bytes are a ping.
        let verack = |r: &Outcome| r.t_ms.verack.or(r.t_ms.pong);
        out.push_str(&format!(
            "{:<12} {:>7} {:>9} {:>11} {:>11} {:>12} {:>12}\n",
            path,
            format!("{}/{}", ok.len(), rs.len()),
            ms(med(&|r| r.t_ms.tcp)),
            ms(med(&|r| r.t_ms.handshake)),
            ms(med(&verack)),
            med(&|r| Some(r.bytes.coordination as f64))
                .map(|b| format!("{b:.0}"))
                .unwrap_or("-".into()),
            med(&|r| Some(r.bytes.direct as f64))
                .map(|b| format!("{b:.0}"))
                .unwrap_or("-".into()),
        ));
    }
    for r in records.iter().filter(|r| !r.ok) {
        out.push_str(&format!(
            "  failed {:?}: {}\n",
            r.path,
            r.error.as_deref().unwrap_or("?")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(quantile(v.clone(), 0.95), Some(19.0));
        assert_eq!(quantile(v.clone(), 0.5), Some(10.0));
        assert_eq!(quantile(v, 1.0), Some(20.0));
        assert_eq!(quantile(vec![5.0], 0.95), Some(5.0));
    }
}
