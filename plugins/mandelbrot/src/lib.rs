//! Renders the Mandelbrot set: a CPU-bound kernel for benchmarks and demos.
//!
//! Input `{"width": 256, "height": 256, "max_iterations": 200,
//! "center": [-0.5, 0.0], "span": 3.0, "format": "ppm" | "summary"}` (all
//! optional, defaults shown; at most 4096×4096 and 100 000 iterations).
//! `ppm` returns a binary PPM image (P6); `summary` returns JSON
//! `{"width", "height", "inside", "iterations"}` with the number of points
//! in the set and the total iterations computed (a checksum of the work).

use serde::{Deserialize, Serialize};
use taskflow_sdk::{Bytes, TaskError, task};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Render {
    width: u32,
    height: u32,
    max_iterations: u32,
    center: [f64; 2],
    span: f64,
    format: Format,
}

impl Default for Render {
    fn default() -> Self {
        Self {
            width: 256,
            height: 256,
            max_iterations: 200,
            center: [-0.5, 0.0],
            span: 3.0,
            format: Format::Ppm,
        }
    }
}

#[derive(Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Format {
    Ppm,
    Summary,
}

#[derive(Debug, PartialEq, Serialize)]
struct Summary {
    width: u32,
    height: u32,
    inside: u64,
    iterations: u64,
}

#[task]
fn mandelbrot(render: Render) -> Result<Bytes, TaskError> {
    if !(1..=4096).contains(&render.width) || !(1..=4096).contains(&render.height) {
        return Err(TaskError::fatal(
            "width and height must be between 1 and 4096",
        ));
    }
    if !(1..=100_000).contains(&render.max_iterations) || render.span.is_nan() || render.span <= 0.0
    {
        return Err(TaskError::fatal(
            "max_iterations must be 1..=100000 and span positive",
        ));
    }
    let (pixels, summary) = compute(&render);
    taskflow_sdk::log::info!(
        "{}x{}: {} points inside",
        render.width,
        render.height,
        summary.inside
    );
    Ok(Bytes(match render.format {
        Format::Summary => serde_json::to_vec(&summary).expect("a summary serializes"),
        Format::Ppm => ppm(render.width, render.height, &pixels, render.max_iterations),
    }))
}

/// Escape iterations per pixel, row by row, and their summary.
fn compute(render: &Render) -> (Vec<u32>, Summary) {
    let scale = render.span / f64::from(render.width.max(render.height));
    let mut pixels = Vec::with_capacity((render.width * render.height) as usize);
    let (mut inside, mut iterations) = (0u64, 0u64);
    for y in 0..render.height {
        for x in 0..render.width {
            let cx = render.center[0] + (f64::from(x) - f64::from(render.width) / 2.0) * scale;
            let cy = render.center[1] + (f64::from(y) - f64::from(render.height) / 2.0) * scale;
            let n = escape_time(cx, cy, render.max_iterations);
            inside += u64::from(n == render.max_iterations);
            iterations += u64::from(n);
            pixels.push(n);
        }
    }
    (
        pixels,
        Summary {
            width: render.width,
            height: render.height,
            inside,
            iterations,
        },
    )
}

fn escape_time(cx: f64, cy: f64, max_iterations: u32) -> u32 {
    let (mut x, mut y) = (0.0f64, 0.0f64);
    let mut n = 0;
    while n < max_iterations && x * x + y * y <= 4.0 {
        (x, y) = (x * x - y * y + cx, 2.0 * x * y + cy);
        n += 1;
    }
    n
}

fn ppm(width: u32, height: u32, pixels: &[u32], max_iterations: u32) -> Vec<u8> {
    let mut image = format!("P6\n{width} {height}\n255\n").into_bytes();
    for &n in pixels {
        let shade = if n == max_iterations {
            0
        } else {
            (255 * n / max_iterations) as u8
        };
        image.extend_from_slice(&[shade, shade / 2, 255 - shade]);
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_origin_is_inside_and_far_points_escape_at_once() {
        assert_eq!(escape_time(0.0, 0.0, 100), 100);
        assert_eq!(
            escape_time(2.5, 2.5, 100),
            1,
            "one step takes it out of the radius-2 disc"
        );
    }

    #[test]
    fn renders_a_ppm_of_the_right_size() {
        let render = Render {
            width: 8,
            height: 4,
            ..Render::default()
        };
        let image = mandelbrot(render).unwrap();
        let header = b"P6\n8 4\n255\n";
        assert_eq!(&image[..header.len()], header);
        assert_eq!(image.len(), header.len() + 8 * 4 * 3);
    }

    #[test]
    fn summaries_are_deterministic() {
        let render = || Render {
            width: 64,
            height: 64,
            format: Format::Summary,
            ..Render::default()
        };
        assert_eq!(compute(&render()).1, compute(&render()).1);
        assert!(compute(&render()).1.inside > 0);
    }

    #[test]
    fn rejects_absurd_sizes() {
        let error = mandelbrot(Render {
            width: 0,
            ..Render::default()
        })
        .unwrap_err();
        assert!(!error.is_retryable());
    }
}
