//! What a backbone expects as input: images resized to `size x size` (bilinear, half-pixel
//! centres, as PIL and torchvision do), channels ordered RGB or BGR, and normalised per channel
//! as `(x - mean) / std` from values in `[0, 1]`.

/// Input preparation for a backbone.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// Side of the square input.
    pub size: usize,
    /// Per-channel mean subtracted (in model channel order).
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    pub std: [f32; 3],
    /// Feed channels as B, G, R instead of R, G, B.
    pub bgr: bool,
}

impl Preprocess {
    /// A description that changes whenever the output would (part of the cache fingerprint).
    pub fn describe(&self) -> String {
        format!("size={} mean={:?} std={:?} bgr={} resize=bilinear", self.size, self.mean, self.std, self.bgr)
    }

    /// Turn one image (`channels` planes of `h x w`, values in `[0, 1]`; 1 channel is repeated
    /// as grey) into the model's `3 x size x size` input, written to `out`.
    pub fn apply(&self, image: &[f32], channels: usize, h: usize, w: usize, out: &mut [f32]) {
        let s = self.size;
        assert_eq!(image.len(), channels * h * w, "image size");
        assert_eq!(out.len(), 3 * s * s, "input size");
        let (ys, xs) = (taps(h, s), taps(w, s));
        for c in 0..3 {
            let src_c = if channels == 1 {
                0
            } else if self.bgr {
                2 - c
            } else {
                c
            };
            let plane = &image[src_c * h * w..(src_c + 1) * h * w];
            let dst = &mut out[c * s * s..(c + 1) * s * s];
            let (m, inv) = (self.mean[c], 1.0 / self.std[c]);
            for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
                let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
                for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
                    let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
                    let bottom = r1[x0] + (r1[x1] - r1[x0]) * fx;
                    dst[oy * s + ox] = (top + (bottom - top) * fy - m) * inv;
                }
            }
        }
    }
}

/// For each output coordinate: the two source coordinates and the weight of the second.
fn taps(from: usize, to: usize) -> Vec<(usize, usize, f32)> {
    let scale = from as f32 / to as f32;
    (0..to)
        .map(|o| {
            let x = ((o as f32 + 0.5) * scale - 0.5).clamp(0.0, (from - 1) as f32);
            let x0 = x.floor() as usize;
            let x1 = (x0 + 1).min(from - 1);
            (x0, x1, x - x0 as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_only_normalises_and_orders_channels() {
        let p = Preprocess { size: 2, mean: [0.5, 0.0, 0.25], std: [0.5, 1.0, 0.25], bgr: false };
        let img: Vec<f32> = (0..12).map(|i| i as f32 / 12.0).collect();
        let mut out = vec![0.0; 12];
        p.apply(&img, 3, 2, 2, &mut out);
        for c in 0..3 {
            for i in 0..4 {
                let want = (img[c * 4 + i] - p.mean[c]) / p.std[c];
                assert!((out[c * 4 + i] - want).abs() < 1e-6);
            }
        }
        let bgr = Preprocess { bgr: true, mean: [0.0; 3], std: [1.0; 3], ..p };
        bgr.apply(&img, 3, 2, 2, &mut out);
        assert_eq!(&out[..4], &img[8..12], "B first");
    }

    #[test]
    fn bilinear_upsampling_matches_half_pixel_interpolation() {
        // 1x2 -> 1x4 along x: half-pixel centres give 0, 0.25, 0.75, 1 of the way.
        let p = Preprocess { size: 4, mean: [0.0; 3], std: [1.0; 3], bgr: false };
        let img = [0.0, 1.0, 0.0, 1.0]; // grey 2x2: columns 0 and 1
        let mut out = vec![0.0; 48];
        p.apply(&img, 1, 2, 2, &mut out);
        assert_eq!(&out[..4], &[0.0, 0.25, 0.75, 1.0]);
        assert_eq!(&out[16..20], &out[..4], "grey is repeated on every channel");
        // A constant image stays constant at any size.
        let flat = vec![0.3; 3 * 5 * 7];
        let mut big = vec![0.0; 3 * 16];
        Preprocess { size: 4, ..p }.apply(&flat, 3, 5, 7, &mut big);
        assert!(big.iter().all(|&v| (v - 0.3).abs() < 1e-6));
    }
}
