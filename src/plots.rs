//! PNG plots drawn with plotters: the pretraining loss and learning-rate curves of a run,
//! 2-D maps of embeddings coloured by class, and tables of images with a colour legend. Text is drawn by plotters' pure-Rust
//! `ab_glyph` renderer in DejaVu Sans, which is compiled into the binary
//! (`assets/fonts/`), so plotting needs no system font or font library.

use crate::metrics::Metrics;
use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::Path;

pub const LOSS_SIZE: (u32, u32) = (960, 720);
pub const EMBEDDING_SIZE: (u32, u32) = (1000, 760);

static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const FONT_NAME: &str = "sans-serif";

/// Registers the bundled font as plotters' "sans-serif" (once).
fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE
        .get_or_init(|| plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT).is_ok());
    ok.then_some(())
        .ok_or_else(|| anyhow!("the bundled font DejaVuSans.ttf cannot be parsed"))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draws with `draw` on a white RGB canvas of `size` and saves it as a PNG at `out`.
fn render(out: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> DrawResult) -> Result<()> {
    register_font()?;
    let mut buf = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        draw(&root)
            .and_then(|()| Ok(root.present()?))
            .map_err(|e| anyhow!("cannot draw {}: {e}", out.display()))?;
    }
    image::RgbImage::from_raw(size.0, size.1, buf)
        .expect("the buffer holds size.0 x size.1 RGB pixels")
        .save_with_format(out, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", out.display()))
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT_NAME, size).into_font().into()
}

/// `(lo, hi)` widened by 5% on each side (and to a nonzero width).
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    (lo - pad, hi + pad)
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

const LOSS_COLOUR: RGBColor = RGBColor(31, 119, 180);
const EPOCH_COLOUR: RGBColor = RGBColor(214, 39, 40);
const LR_COLOUR: RGBColor = RGBColor(44, 160, 44);
const GRID_COLOUR: RGBColor = RGBColor(238, 238, 238);

/// The loss of `metrics` against the step (each logged step, and each epoch's mean at the
/// middle of the epoch's steps) above the learning rate against the step, under `title`.
pub fn loss_plot(metrics: &Metrics, title: &str, out: &Path) -> Result<()> {
    let steps = &metrics.steps;
    let epochs = &metrics.epochs;
    let last_step = steps
        .iter()
        .map(|s| s.step)
        .chain(epochs.iter().map(|e| e.step))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    // Each epoch's mean loss is drawn at the middle of the steps it averages.
    let epoch_means: Vec<(f64, f64)> = epochs
        .iter()
        .scan(0u64, |start, e| {
            let mid = (*start + e.step) as f64 / 2.0;
            *start = e.step;
            Some((mid, e.loss))
        })
        .collect();
    let loss_range = padded_range(
        steps
            .iter()
            .map(|s| s.loss)
            .chain(epochs.iter().map(|e| e.loss)),
    );
    let x_range = 0f64..last_step * 1.02;
    // Enough decimals to tell the loss axis' ticks apart.
    let span = loss_range.end - loss_range.start;
    let loss_digits = (1.0 - span.log10().floor()).clamp(0.0, 8.0) as usize;
    render(out, LOSS_SIZE, |root| {
        let body = root.titled(title, font(24))?;
        let (top, bottom) = if steps.is_empty() {
            (body.clone(), None)
        } else {
            let (t, b) = body.split_vertically(LOSS_SIZE.1 * 58 / 100);
            (t, Some(b))
        };
        let loss_label = |v: &f64| format!("{:.*}", loss_digits, v);
        let mut chart = step_panel(
            &top,
            "training loss",
            x_range.clone(),
            loss_range.clone(),
            "loss",
            &loss_label,
        )?;
        if !steps.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    steps.iter().map(|s| (s.step as f64, s.loss)),
                    LOSS_COLOUR.stroke_width(2),
                ))?
                .label("logged step")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], LOSS_COLOUR));
        }
        if !epochs.is_empty() {
            chart
                .draw_series(
                    epoch_means
                        .iter()
                        .map(|&p| Circle::new(p, 5, EPOCH_COLOUR.filled())),
                )?
                .label("epoch mean (mid-epoch)")
                .legend(|(x, y)| Circle::new((x + 10, y), 5, EPOCH_COLOUR.filled()));
        }
        chart
            .configure_series_labels()
            .label_font(font(14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        if let Some(bottom) = bottom {
            let (_, lr_hi) = min_max(steps.iter().map(|s| s.lr));
            let mut chart = step_panel(
                &bottom,
                "learning rate",
                x_range.clone(),
                0f64..(lr_hi.max(1e-12) * 1.05),
                "learning rate",
                &|v| format!("{v:.1e}"),
            )?;
            chart.draw_series(LineSeries::new(
                steps.iter().map(|s| (s.step as f64, s.lr)),
                LR_COLOUR.stroke_width(2),
            ))?;
        }
        Ok(())
    })
}

type StepChart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A chart against the step on `area`, with its caption and mesh drawn.
fn step_panel<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    y_desc: &str,
    y_label: &dyn Fn(&f64) -> String,
) -> std::result::Result<StepChart<'a, 'b>, Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, font(18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .label_style(font(14))
        .axis_desc_style(font(16))
        .light_line_style(GRID_COLOUR)
        .y_label_formatter(y_label)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    Ok(chart)
}

fn padded_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = min_max(values.filter(|v| v.is_finite()));
    let (lo, hi) = if lo.is_finite() {
        padded(lo, hi)
    } else {
        (0.0, 1.0)
    };
    lo..hi
}

/// Matplotlib's tab10 palette.
const TAB10: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of class `c` of `n`: tab10 for up to 10 classes, else hues around the circle;
/// grey for labels outside 0..n.
pub fn class_colour(c: i64, n: usize) -> RGBColor {
    match usize::try_from(c) {
        Ok(c) if c < n && n <= TAB10.len() => TAB10[c],
        Ok(c) if c < n => {
            let rgb = HSLColor(
                c as f64 / n as f64,
                0.7,
                if c % 2 == 0 { 0.45 } else { 0.6 },
            )
            .to_backend_color()
            .rgb;
            RGBColor(rgb.0, rgb.1, rgb.2)
        }
        _ => RGBColor(160, 160, 160),
    }
}

/// Legend entries drawn at most; further classes are summarised in one line.
const LEGEND_MAX: usize = 30;

/// A scatter plot of 2-D points `[x, y]` coloured by their labels, with a legend of the
/// class names (`class_names[label]`; other labels are drawn grey as "unlabeled").
pub fn embedding_plot(
    points: &[[f32; 2]],
    labels: &[i64],
    class_names: &[String],
    title: &str,
    out: &Path,
) -> Result<()> {
    let n = class_names.len();
    let xr = padded_range(points.iter().map(|p| p[0] as f64));
    let yr = padded_range(points.iter().map(|p| p[1] as f64));
    render(out, EMBEDDING_SIZE, |root| {
        let body = root.titled(title, font(22))?;
        let (plot, legend) = body.split_horizontally(EMBEDDING_SIZE.0 - 210);
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(xr.clone(), yr.clone())?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("t-SNE 1")
            .y_desc("t-SNE 2")
            .label_style(font(13))
            .axis_desc_style(font(15))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        chart.draw_series(points.iter().zip(labels).map(|(p, &l)| {
            Circle::new(
                (p[0] as f64, p[1] as f64),
                3,
                class_colour(l, n).mix(0.75).filled(),
            )
        }))?;
        let mut present: Vec<i64> = labels.to_vec();
        present.sort_unstable();
        present.dedup();
        let (shown, rest) = present.split_at(present.len().min(LEGEND_MAX));
        let row = 22;
        for (i, &l) in shown.iter().enumerate() {
            let y = 30 + row * i as i32;
            let name = usize::try_from(l)
                .ok()
                .and_then(|c| class_names.get(c))
                .map_or("unlabeled", String::as_str);
            legend.draw(&Circle::new((16, y), 6, class_colour(l, n).filled()))?;
            legend.draw(&Text::new(name.to_string(), (30, y - 8), font(15)))?;
        }
        if !rest.is_empty() {
            let y = 30 + row * shown.len() as i32;
            let more = format!("+ {} more classes", rest.len());
            legend.draw(&Text::new(more, (10, y - 8), font(15)))?;
        }
        Ok(())
    })
}

/// Cells of an image table are enlarged by an integer factor to at least this many pixels.
const TABLE_CELL: u32 = 128;
const TABLE_GAP: u32 = 8;
const TABLE_HEAD: u32 = 64;
const TABLE_LEGEND: u32 = 190;

/// The pixel size of `image_table` for `rows` x `cols` cells of `side` x `side` images.
pub fn image_table_size(rows: usize, cols: usize, side: u32) -> (u32, u32) {
    let cell = side * TABLE_CELL.div_ceil(side.max(1));
    (
        TABLE_GAP + cols as u32 * (cell + TABLE_GAP) + TABLE_LEGEND,
        TABLE_HEAD + rows.max(1) as u32 * (cell + TABLE_GAP),
    )
}

/// A table of equally sized square RGB images (`rows` of cells), a heading over each of
/// the `columns`, and a legend of colour swatches with their names on the right (for
/// pictures whose cells are drawn in a fixed palette, such as segmentation masks).
pub fn image_table(
    rows: &[Vec<image::RgbImage>],
    columns: &[String],
    legend: &[(String, [u8; 3])],
    title: &str,
    out: &Path,
) -> Result<()> {
    let side = rows
        .first()
        .and_then(|r| r.first())
        .map_or(1, |i| i.width());
    let scale = TABLE_CELL.div_ceil(side.max(1));
    let cell = side * scale;
    let size = image_table_size(rows.len(), columns.len(), side);
    render(out, size, |root| {
        root.draw(&Text::new(
            title.to_string(),
            (TABLE_GAP as i32, 6),
            font(20),
        ))?;
        let x0 = |c: usize| (TABLE_GAP + c as u32 * (cell + TABLE_GAP)) as i32;
        for (c, name) in columns.iter().enumerate() {
            root.draw(&Text::new(
                name.clone(),
                (x0(c), TABLE_HEAD as i32 - 24),
                font(16),
            ))?;
        }
        for (r, row) in rows.iter().enumerate() {
            let y0 = (TABLE_HEAD + r as u32 * (cell + TABLE_GAP)) as i32;
            for (c, img) in row.iter().enumerate() {
                for (x, y, px) in img.enumerate_pixels() {
                    let colour = RGBColor(px[0], px[1], px[2]);
                    let (x, y) = (x0(c) + (x * scale) as i32, y0 + (y * scale) as i32);
                    // A filled rectangle covers its corners' span less the far edges.
                    let corner = (x + scale as i32, y + scale as i32);
                    root.draw(&Rectangle::new([(x, y), corner], colour.filled()))?;
                }
            }
        }
        let lx = (size.0 - TABLE_LEGEND + TABLE_GAP) as i32;
        let row = 22;
        let shown = legend.len().min(LEGEND_MAX);
        for (i, (name, [r, g, b])) in legend[..shown].iter().enumerate() {
            let y = TABLE_HEAD as i32 + row * i as i32;
            root.draw(&Rectangle::new(
                [(lx, y), (lx + 14, y + 14)],
                RGBColor(*r, *g, *b).filled(),
            ))?;
            root.draw(&Rectangle::new(
                [(lx, y), (lx + 14, y + 14)],
                BLACK.stroke_width(1),
            ))?;
            root.draw(&Text::new(name.clone(), (lx + 22, y - 1), font(15)))?;
        }
        if legend.len() > shown {
            let y = TABLE_HEAD as i32 + row * shown as i32;
            let more = format!("+ {} more", legend.len() - shown);
            root.draw(&Text::new(more, (lx, y), font(15)))?;
        }
        Ok(())
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metrics::{EpochRecord, StepRecord};
    use crate::rundir::RunDir;

    /// Opens the PNG at `p`; checks its size and that it is not one flat colour; returns
    /// how many distinct colours it has.
    pub(crate) fn check_png(p: &Path, size: (u32, u32)) -> usize {
        let img = image::open(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .to_rgb8();
        assert_eq!(img.dimensions(), size, "{}", p.display());
        let mut colours: Vec<[u8; 3]> = img.pixels().map(|px| px.0).collect();
        colours.sort_unstable();
        colours.dedup();
        assert!(colours.len() > 2, "{} is nearly one colour", p.display());
        colours.len()
    }

    fn dark_pixels(
        img: &image::RgbImage,
        x: std::ops::Range<u32>,
        y: std::ops::Range<u32>,
    ) -> usize {
        y.flat_map(|y| x.clone().map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
            .count()
    }

    fn metrics() -> Metrics {
        Metrics {
            steps: (1..=50)
                .map(|s| StepRecord {
                    step: s,
                    loss: 1.0 / s as f64,
                    lr: 1e-3 * (s as f64 / 50.0),
                })
                .collect(),
            epochs: (1..=5)
                .map(|e| EpochRecord {
                    epoch: e,
                    step: 10 * e,
                    loss: 1.0 / (10 * e) as f64,
                    images_per_sec: 100.0,
                    epoch_seconds: 1.0,
                    time: e as f64,
                })
                .collect(),
            notes: vec![],
        }
    }

    #[test]
    fn loss_plot_writes_a_png_with_curves_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(RunDir::LOSS_PLOT);
        loss_plot(&metrics(), "autoencoder on tiny", &out).unwrap();
        check_png(&out, LOSS_SIZE);
        let img = image::open(&out).unwrap().to_rgb8();
        // The title is drawn: dark glyph pixels in the top band.
        assert!(dark_pixels(&img, 300..660, 0..30) > 100, "no title text");
        // Both curve colours appear.
        for c in [LOSS_COLOUR, LR_COLOUR, EPOCH_COLOUR] {
            assert!(
                img.pixels().any(|p| p.0 == [c.0, c.1, c.2]),
                "colour {c:?} missing"
            );
        }
        // Epoch records alone (a log_every longer than the run) still make a plot.
        let only_epochs = Metrics {
            steps: vec![],
            ..metrics()
        };
        loss_plot(&only_epochs, "t", &out).unwrap();
        check_png(&out, LOSS_SIZE);
    }

    #[test]
    fn loss_plot_of_a_missing_or_garbled_log_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(RunDir::METRICS);
        let out = dir.path().join(RunDir::LOSS_PLOT);
        let plot = || crate::report::write_loss_plot(dir.path(), "m", "d").unwrap_err();
        let e = format!("{:#}", plot());
        assert!(e.contains(&log.display().to_string()), "{e}");
        std::fs::write(
            &log,
            "{\"kind\": \"step\", \"step\": 1, \"loss\": 0.5, \"lr\": 1}\nnot json\n",
        )
        .unwrap();
        let e = format!("{:#}", plot());
        assert!(
            e.contains(&log.display().to_string()) && e.contains("line 2"),
            "{e}"
        );
        assert!(!out.exists());
    }

    #[test]
    fn image_table_places_enlarged_cells_headings_and_legend() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("table.png");
        // 2 rows x 2 columns of 4x4 images, each one flat colour, pixel (1, 2) of the last
        // a different one: enlarged 32 times to 128-pixel cells.
        let flat = |v: u8| image::RgbImage::from_pixel(4, 4, image::Rgb([v, 0, 255 - v]));
        let mut last = flat(200);
        last.put_pixel(1, 2, image::Rgb([0, 255, 0]));
        let rows = vec![vec![flat(10), flat(60)], vec![flat(120), last]];
        let columns = vec!["image".to_string(), "truth".to_string()];
        let legend = vec![
            ("background".to_string(), [0, 0, 0]),
            ("coat".to_string(), [128, 0, 0]),
        ];
        image_table(&rows, &columns, &legend, "segmentation", &out).unwrap();
        let size = image_table_size(2, 2, 4);
        assert_eq!(size, (8 + 2 * 136 + TABLE_LEGEND, 64 + 2 * 136));
        check_png(&out, size);
        let img = image::open(&out).unwrap().to_rgb8();
        let cell =
            |r: u32, c: u32, x: u32, y: u32| *img.get_pixel(8 + c * 136 + x, 64 + r * 136 + y);
        assert_eq!(cell(0, 0, 0, 0), image::Rgb([10, 0, 245]));
        assert_eq!(cell(0, 1, 127, 127), image::Rgb([60, 0, 195]));
        assert_eq!(cell(1, 1, 32 + 5, 64 + 30), image::Rgb([0, 255, 0]));
        assert_eq!(cell(1, 1, 32 + 5, 96 + 1), image::Rgb([200, 0, 55]));
        // The gap between cells stays white; headings and the legend are drawn.
        assert_eq!(*img.get_pixel(8 + 130, 100), image::Rgb([255, 255, 255]));
        assert!(dark_pixels(&img, 8..120, 30..60) > 20, "no heading");
        let lx = size.0 - TABLE_LEGEND + TABLE_GAP;
        assert_eq!(*img.get_pixel(lx + 7, 64 + 22 + 7), image::Rgb([128, 0, 0]));
        assert!(
            dark_pixels(&img, lx + 22..size.0, 64..84) > 20,
            "no legend text"
        );
    }

    #[test]
    fn embedding_plot_colours_points_by_class_with_a_legend() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(RunDir::EMBEDDING);
        let names: Vec<String> = ["T-shirt/top", "Trouser", "Pullover"]
            .map(String::from)
            .into();
        let points: Vec<[f32; 2]> = (0..90)
            .map(|i| {
                [
                    (i % 3) as f32 * 10.0 + (i as f32 * 0.37).sin(),
                    (i as f32 * 0.61).cos(),
                ]
            })
            .collect();
        let labels: Vec<i64> = (0..90).map(|i| i % 3).collect();
        embedding_plot(
            &points,
            &labels,
            &names,
            "autoencoder: test embeddings",
            &out,
        )
        .unwrap();
        check_png(&out, EMBEDDING_SIZE);
        let img = image::open(&out).unwrap().to_rgb8();
        // Each class's points, 75% opaque on white, in the plot (left of the legend).
        let plot_w = EMBEDDING_SIZE.0 - 210;
        for c in 0..3 {
            let RGBColor(r, g, b) = class_colour(c, 3);
            let want = [r, g, b].map(|v| 0.75 * v as f64 + 0.25 * 255.0);
            let near = |p: &image::Rgb<u8>| {
                p.0.iter()
                    .zip(want)
                    .all(|(&v, w)| (v as f64 - w).abs() < 4.0)
            };
            let n = (0..plot_w)
                .flat_map(|x| (0..EMBEDDING_SIZE.1).map(move |y| (x, y)))
                .filter(|&(x, y)| near(img.get_pixel(x, y)))
                .count();
            assert!(n > 100, "class {c}: {n} pixels of its colour in the plot");
        }
        // Legend text right of the plot.
        let x0 = EMBEDDING_SIZE.0 - 180;
        assert!(
            dark_pixels(&img, x0..EMBEDDING_SIZE.0, 40..120) > 50,
            "no legend text"
        );
        // Many classes: distinct colours, and the legend is cut with a count.
        let names: Vec<String> = (0..100).map(|i| format!("class {i}")).collect();
        let labels: Vec<i64> = (0..90).collect();
        embedding_plot(&points, &labels, &names, "t", &out).unwrap();
        check_png(&out, EMBEDDING_SIZE);
        assert_ne!(class_colour(11, 100), class_colour(12, 100));
    }
}
