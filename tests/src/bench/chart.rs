//! The PNG chart: latency percentiles at 1000 req/s (log scale) and throughput per set-up,
//! drawn with plotters into an RGB buffer and encoded with the `png` crate. Text uses a
//! TrueType font read at run time (DejaVu Sans from Debian's fonts-dejavu-core, installed
//! with apt-get when missing and we are root), rasterized by ab_glyph: no font library.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::report::SetupFigures;

/// Why the chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// No usable font.
    #[error(
        "no TrueType font found (looked for {0}); install Debian's fonts-dejavu-core \
         (`sudo apt-get install fonts-dejavu-core`)"
    )]
    NoFont(String),
    /// plotters failed.
    #[error("drawing the chart failed: {0}")]
    Draw(String),
    /// Writing the PNG failed.
    #[error("cannot write the chart {path}: {detail}")]
    Write {
        /// Where.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

fn load_font() -> Result<&'static [u8], ChartError> {
    let read = || FONTS.iter().find_map(|p| std::fs::read(p).ok());
    let mut bytes = read();
    if bytes.is_none() && nix::unistd::geteuid().is_root() {
        eprintln!(
            "docmesh-bench: no font for the chart; installing fonts-dejavu-core with apt-get"
        );
        let _ = std::process::Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "fonts-dejavu-core",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        bytes = read();
    }
    let bytes = bytes.ok_or_else(|| ChartError::NoFont(FONTS.join(", ")))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| ChartError::NoFont(FONTS.join(", ")))?;
    Ok(bytes)
}

fn draw_err<E: std::fmt::Debug>(e: E) -> ChartError {
    ChartError::Draw(format!("{e:?}"))
}

const COLORS: [RGBColor; 6] = [
    RGBColor(120, 120, 120), // direct
    RGBColor(31, 119, 180),  // docmesh
    RGBColor(148, 103, 189), // docmesh-h2
    RGBColor(44, 160, 44),   // nginx
    RGBColor(214, 39, 40),   // haproxy
    RGBColor(255, 127, 14),  // haproxy-h2
];

const PCTS: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

/// Draws the chart of `figs` (in [`super::setups::Kind::ALL`] order) to `path`.
pub fn draw(path: &Path, figs: &[SetupFigures], subtitle: &str) -> Result<(), ChartError> {
    load_font()?;
    let (w, h) = (1400u32, 640u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let root = root
            .titled(
                &format!("docmesh vs nginx vs HAProxy (mTLS sidecar pairs) - {subtitle}"),
                ("sans-serif", 22),
            )
            .map_err(draw_err)?;
        let (left, right) = root.split_horizontally(820);
        latency_panel(&left, figs)?;
        throughput_panel(&right, figs)?;
        root.present().map_err(draw_err)?;
    }
    let write_err = |detail: String| ChartError::Write {
        path: path.to_path_buf(),
        detail,
    };
    let file = std::fs::File::create(path).map_err(|e| write_err(e.to_string()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| write_err(e.to_string()))?;
    writer
        .write_image_data(&buf)
        .map_err(|e| write_err(e.to_string()))?;
    writer.finish().map_err(|e| write_err(e.to_string()))
}

fn category_label(names: &[&str], x: f64) -> String {
    let r = x.round();
    if (x - r).abs() < 1e-6 && r >= 0.0 {
        names
            .get(r as usize)
            .map(|s| s.to_string())
            .unwrap_or_default()
    } else {
        String::new()
    }
}

fn latency_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    figs: &[SetupFigures],
) -> Result<(), ChartError> {
    let values: Vec<Vec<f64>> = figs
        .iter()
        .map(|s| {
            PCTS.iter()
                .map(|(_, p)| s.percentile(*p).max(1.0))
                .collect()
        })
        .collect();
    let max = values.iter().flatten().cloned().fold(1.0, f64::max);
    let min = values.iter().flatten().cloned().fold(f64::MAX, f64::min);
    let lo = 10f64.powf((min * 0.5).max(1.0).log10().floor());
    let hi = 10f64.powf((max * 3.0).log10().ceil());
    let names: Vec<&str> = PCTS.iter().map(|(n, _)| *n).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(
            "latency at 1000 req/s, open loop (us from intended send, log scale)",
            ("sans-serif", 17),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..3.5f64, (lo..hi).log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(9)
        .x_label_formatter(&|x| category_label(&names, *x))
        .y_desc("microseconds")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(draw_err)?;
    let n = figs.len().max(1) as f64;
    let bw = 0.8 / n;
    for (si, s) in figs.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let vals = values[si].clone();
        chart
            .draw_series(vals.iter().enumerate().map(|(pi, v)| {
                let x0 = pi as f64 - 0.4 + si as f64 * bw;
                Rectangle::new([(x0, lo), (x0 + bw * 0.9, *v)], color.filled())
            }))
            .map_err(draw_err)?
            .label(s.kind.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled()));
        chart
            .draw_series(vals.iter().enumerate().map(|(pi, v)| {
                let x0 = pi as f64 - 0.4 + si as f64 * bw;
                Text::new(
                    format!("{v:.0}"),
                    (x0, v * 1.12),
                    ("sans-serif", 11).into_font().color(&BLACK),
                )
            }))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)
}

fn throughput_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    figs: &[SetupFigures],
) -> Result<(), ChartError> {
    let vals: Vec<f64> = figs.iter().map(SetupFigures::rps).collect();
    let max = vals.iter().cloned().fold(1.0, f64::max) * 1.15;
    let names: Vec<&str> = figs.iter().map(|s| s.kind.name()).collect();
    let last = figs.len().max(1) as f64 - 0.5;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "throughput, 16 keep-alive connections (req/s)",
            ("sans-serif", 17),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..last, 0f64..max)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * figs.len() + 1)
        .x_label_formatter(&|x| category_label(&names, *x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(draw_err)?;
    chart
        .draw_series(vals.iter().enumerate().map(|(i, v)| {
            let color = COLORS[i % COLORS.len()];
            Rectangle::new(
                [(i as f64 - 0.35, 0.0), (i as f64 + 0.35, *v)],
                color.filled(),
            )
        }))
        .map_err(draw_err)?;
    chart
        .draw_series(vals.iter().enumerate().map(|(i, v)| {
            Text::new(
                format!("{v:.0}"),
                (i as f64 - 0.2, v + max * 0.03),
                ("sans-serif", 14).into_font().color(&BLACK),
            )
        }))
        .map_err(draw_err)?;
    Ok(())
}
