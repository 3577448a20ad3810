//! Prometheus' text exposition format, written by hand: each daemon has a dozen figures,
//! not enough to justify a metrics registry.

use std::fmt::Write;
use std::time::SystemTime;

/// One scrape's text. Every daemon's starts with `stolon_cluster_identifier`, as Stolon's
/// do, so that dashboards can group by cluster and component.
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new(component: &str, cluster_name: &str) -> Exposition {
        let mut exposition = Exposition { out: String::new() };
        exposition.labelled(
            "stolon_cluster_identifier",
            "gauge",
            "Always 1; labels name the cluster and the component.",
            &[
                ("cluster_name", cluster_name.to_string()),
                ("component", component.to_string()),
            ],
        );
        exposition
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.family(name, "gauge", help, &[("", value)])
    }

    pub fn counter(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.family(name, "counter", help, &[("", value)])
    }

    /// A gauge with one sample per value of `label`, 1 for `current` and 0 for the others.
    pub fn one_of(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: &[&str],
        current: &str,
    ) -> &mut Self {
        let samples: Vec<(String, f64)> = values
            .iter()
            .map(|v| {
                (
                    format!("{{{label}=\"{v}\"}}"),
                    f64::from(u8::from(*v == current)),
                )
            })
            .collect();
        let samples: Vec<(&str, f64)> = samples.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        self.family(name, "gauge", help, &samples)
    }

    fn labelled(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, String)]) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        self.family(
            name,
            kind,
            help,
            &[(&format!("{{{}}}", labels.join(",")), 1.0)],
        );
    }

    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.out, "{name}{labels} {value}");
        }
        self
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Seconds since the epoch, the unit of Prometheus' timestamps-as-values; 0 for never.
pub fn unix_seconds(at: Option<SystemTime>) -> f64 {
    at.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let mut e = Exposition::new("keeper", "a\"b");
        e.gauge("x_up", "Up.", 1.0)
            .counter("x_total", "Things.", 42.0)
            .one_of("x_role", "Role.", "role", &["master", "standby"], "standby");
        assert_eq!(
            e.finish(),
            "# HELP stolon_cluster_identifier Always 1; labels name the cluster and the component.\n\
             # TYPE stolon_cluster_identifier gauge\n\
             stolon_cluster_identifier{cluster_name=\"a\\\"b\",component=\"keeper\"} 1\n\
             # HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n\
             # HELP x_total Things.\n# TYPE x_total counter\nx_total 42\n\
             # HELP x_role Role.\n# TYPE x_role gauge\n\
             x_role{role=\"master\"} 0\nx_role{role=\"standby\"} 1\n"
        );
    }

    #[test]
    fn timestamps() {
        assert_eq!(unix_seconds(None), 0.0);
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1500);
        assert_eq!(unix_seconds(Some(t)), 1.5);
    }
}
