//! `benchfs bench sweep`: one workload over a grid of cluster settings. Each point gets a
//! cluster of its own, started with that point's settings and stopped after it.

use std::time::SystemTime;

use benchfs_bench::report;

use super::args::{parse_size, suite_phases, Common, Sizes};
use super::launch::{self, Point};
use crate::cli::cluster::{self, Target, UpArgs};
use crate::cli::CliError;

/// Settings a sweep can vary.
const PARAMETERS: [&str; 6] = [
    "chunk_size",
    "rdma_threshold",
    "backend",
    "replicas",
    "servers",
    "inline_bytes",
];

/// Arguments of `benchfs bench sweep`.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    /// A swept setting and its values, as NAME=V1,V2,... (repeatable; the grid is every
    /// combination). NAME is one of chunk_size, rdma_threshold, backend, replicas, servers,
    /// inline_bytes.
    #[arg(long = "param", required = true, value_parser = parse_param)]
    pub params: Vec<(String, Vec<String>)>,
    /// The workload at each point: ior-easy, ior-hard, mdtest-easy, mdtest-hard or suite.
    #[arg(long, default_value = "ior-easy", value_parser = ["ior-easy", "ior-hard", "mdtest-easy", "mdtest-hard", "suite"])]
    pub workload: String,
    /// The sizes of the IO500 shapes.
    #[command(flatten)]
    pub sizes: Sizes,
    /// Everything else.
    #[command(flatten)]
    pub common: Common,
}

fn parse_param(s: &str) -> Result<(String, Vec<String>), String> {
    let (name, values) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=V1,V2,..."))?;
    if !PARAMETERS.contains(&name) {
        return Err(format!(
            "{name:?} cannot be swept; one of {}",
            PARAMETERS.join(", ")
        ));
    }
    let values: Vec<String> = values
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect();
    if values.is_empty() {
        return Err(format!("{name}: no values"));
    }
    Ok((name.to_owned(), values))
}

/// Sets a point's values on the cluster about to start.
pub fn apply(point: &Point, up: &mut UpArgs) -> Result<(), CliError> {
    for (name, value) in point {
        let bad = |e: String| -> CliError { format!("sweep {name}={value}: {e}").into() };
        match name.as_str() {
            "chunk_size" => up.chunk_size = Some(parse_size(value).map_err(bad)?),
            "rdma_threshold" => up.rdma_threshold = Some(parse_size(value).map_err(bad)?),
            "backend" => up.backend.clone_from(value),
            "replicas" => up.replicas = value.parse().map_err(|_| bad("not a number".into()))?,
            "servers" => up.servers = value.parse().map_err(|_| bad("not a number".into()))?,
            "inline_bytes" => up.inline_bytes = Some(parse_size(value).map_err(bad)?),
            _ => return Err(bad("not a sweepable setting".into())),
        }
    }
    Ok(())
}

/// Refuses a setting swept twice: the grid would keep only its last values.
fn check_params(params: &[(String, Vec<String>)]) -> Result<(), String> {
    for (at, (name, _)) in params.iter().enumerate() {
        if params[..at].iter().any(|(earlier, _)| earlier == name) {
            return Err(format!(
                "--param {name} is given twice: list all its values in one --param {name}=V1,V2,..."
            ));
        }
    }
    Ok(())
}

/// Every combination of the swept values, the first parameter varying slowest.
fn grid(params: &[(String, Vec<String>)]) -> Vec<Point> {
    params
        .iter()
        .fold(vec![Point::new()], |points, (name, values)| {
            points
                .into_iter()
                .flat_map(|p| {
                    values.iter().map(move |v| {
                        let mut p = p.clone();
                        p.insert(name.clone(), v.clone());
                        p
                    })
                })
                .collect()
        })
}

/// A point as its settings, `chunk_size=64k rdma_threshold=4k`.
fn label(point: &Point) -> String {
    point
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the sweep and reports every point together.
pub fn run(args: &SweepArgs) -> Result<(), CliError> {
    let common = &args.common;
    check_params(&args.params)?;
    if common.dir.is_some() || common.registry.is_some() || common.posix.is_some() {
        return Err(
            "a sweep starts a cluster per point: it takes no --dir, --registry or --posix".into(),
        );
    }
    let (easy, hard, md_easy, md_hard) = args.sizes.specs();
    let suite = suite_phases(&easy, &hard, &md_easy, &md_hard);
    let prefix = format!("{}-", args.workload);
    let phases: Vec<_> = suite
        .into_iter()
        .filter(|p| args.workload == "suite" || p.name().starts_with(&prefix))
        .collect();
    // The workload and every point's settings are checked before the first point's
    // cluster starts: a bad combination found halfway would end the sweep with the points
    // before it measured and not reported.
    // (Each point's run takes a fresh workspace of its own; the name here only passes.)
    super::plan(common, phases.clone(), "sweep".to_owned()).validate_workload()?;
    let points = grid(&args.params);
    for point in &points {
        let target = Target {
            dir: std::env::temp_dir().join("benchfs-sweep-check"),
            secret_file: None,
            registry: None,
        };
        cluster::check_settings(&launch::up_args(common, point, target)?)
            .map_err(|e| format!("sweep point {}: {e}", label(point)))?;
    }
    let load_before = report::load_average();
    let started = SystemTime::now();
    let mut measured = Vec::new();
    for point in points {
        outln!("sweep point {}", label(&point));
        if let Some(m) = launch::measure(common, phases.clone(), &point)? {
            measured.push(m);
        }
    }
    if measured.is_empty() {
        return Ok(());
    }
    let mut report = launch::build_report(measured, load_before, started);
    for key in args.params.iter().map(|(k, _)| k) {
        report.meta.config.insert(key.clone(), "swept".into());
    }
    launch::emit(common, &format!("sweep-{}", args.workload), &report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_is_every_combination_in_order() {
        let params = vec![
            (
                "chunk_size".to_owned(),
                vec!["1m".to_owned(), "4m".to_owned()],
            ),
            (
                "replicas".to_owned(),
                vec!["1".to_owned(), "2".to_owned(), "3".to_owned()],
            ),
        ];
        let g = grid(&params);
        assert_eq!(g.len(), 6);
        assert_eq!(g[0]["chunk_size"], "1m");
        assert_eq!(g[2]["replicas"], "3");
        assert_eq!(g[3]["chunk_size"], "4m");
        assert!(parse_param("chunk_size=").is_err());
        assert!(parse_param("colour=red").is_err());
        assert!(check_params(&params).is_ok());
        let twice = [params[0].clone(), params[1].clone(), params[0].clone()];
        let err = check_params(&twice).unwrap_err();
        assert!(err.contains("chunk_size is given twice"), "{err}");
        assert_eq!(
            parse_param("backend=memory, file").unwrap().1,
            ["memory", "file"]
        );
    }
}
