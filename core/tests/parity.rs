#![allow(clippy::unwrap_used)]
//! tract output vs onnxruntime's on the shared test vector: ≤ 1e-4 max abs, batch 1 and 2.
mod common;

const TOL: f32 = 1e-4;

fn check(id: &str, ort_file: &str) {
    let model = common::load_model(id);
    let input = common::f32_file("testdata/models/testvec_input_2x3x224x224.f32");
    let expected = common::f32_file(&format!("testdata/models/{ort_file}"));
    assert_eq!(input.len(), 2 * 3 * 224 * 224);
    assert_eq!(expected.len(), 28);

    let batch2 = model.run_raw(input.clone(), 2).unwrap();
    let per = input.len() / 2;
    let single: Vec<Vec<f32>> = (0..2)
        .map(|b| model.run_raw(input[b * per..(b + 1) * per].to_vec(), 1).unwrap().remove(0))
        .collect();
    for (name, got) in [("batch 2", batch2.concat()), ("batch 1", single.concat())] {
        let max = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("{id} {name}: max |tract - ort| = {max:.3e}");
        assert!(max <= TOL, "{id} {name}: max abs diff {max} > {TOL}");
    }
}

#[test]
fn densenet121_matches_onnxruntime() {
    check("densenet121-chexnet", "densenet121_chexnet.testvec_output_ort.f32");
}

#[test]
fn mobilenetv2_matches_onnxruntime() {
    check("mobilenetv2-chexnet", "mobilenetv2.testvec_output_ort.f32");
}

/// MobileNetV2's 17 depthwise convolutions run on medinfer's operators on x86-64 and on tract's
/// elsewhere (`core/src/depthwise.rs`), all but three fused (`core/src/fused.rs`). Where the CPU
/// has AVX2 and FMA (or AVX-512), whose masked kernels run a depthwise convolution by bands of
/// rows: the first with the stem before it and the projection after it, the next three
/// (expansions into more than L2) with the expansion before and the projection after, 10 with
/// the expansion before; else 13 with the expansion before and the first alone (its depthwise convolution
/// runs whole planes there, so a chain with the projection would be one band, the projection on
/// one thread). The 3 others (after the 7 × 7 expansions) run alone.
/// `mobilenetv2_matches_onnxruntime` checks the plan's numbers either way.
#[test]
fn mobilenetv2_depthwise_operator() {
    let model = common::load_model("mobilenetv2-chexnet");
    let ops = model.plan_operators();
    let count = |name: &str| ops.iter().filter(|op| *op == name).count();
    let ours = (
        count("medinfer.ExpandDepthwise"),
        count("medinfer.DepthwiseProject") + count("medinfer.ConvDepthwiseProject"),
        count("medinfer.DepthwiseConv"),
    );
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let by_rows = has!("avx512f") || (has!("avx2") && has!("fma"));
        let want = if by_rows { (10, 4, 3) } else { (13, 0, 4) };
        assert_eq!((ours, count("DepthWiseConv")), (want, 0), "{ops:?}");
    }
    #[cfg(not(target_arch = "x86_64"))]
    assert_eq!(ours, (0, 0, 0), "{ops:?}");
}

/// MobileNetV2's ten residual additions: on x86-64, each after a projection that runs on
/// medinfer's direct convolution folds into it (`conv::fuse_residuals`, the operator then
/// named `medinfer.ConvAdd`). Where the CPU has AVX-512, nine: the one after the 56 × 56
/// banded chain (`fused`'s `ConvDepthwiseProject`) is left to tract. With AVX2 and FMA only,
/// seven: that one too, and tract's matrix products run the two 7 × 7 projections (their
/// additions fused into them). Elsewhere
/// none (tract's own). `mobilenetv2_matches_onnxruntime` checks the numbers.
#[test]
fn mobilenetv2_residual_additions() {
    let ops = common::load_model("mobilenetv2-chexnet").plan_operators();
    let count = |f: &dyn Fn(&str) -> bool| ops.iter().filter(|op| f(op)).count();
    let ours = count(&|op| op == "medinfer.ConvAdd");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let tracts = count(&|op| op.contains("Add") && !op.starts_with("medinfer."));
        if has!("avx512f") {
            assert_eq!((ours, tracts), (9, 1), "{ops:?}");
        } else if has!("avx2") && has!("fma") {
            assert_eq!((ours, tracts), (7, 1), "{ops:?}");
        } else {
            assert_eq!(ours, 8, "{ops:?}");
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    assert_eq!(ours, 0, "{ops:?}");
}

/// DenseNet-121's one max pooling (3×3, stride 2, after the stem) runs on medinfer's operator
/// on x86-64 (`depthwise`; with the stem, band by band, where the CPU has AVX2 or AVX-512:
/// `fused`'s `ConvMaxPool`), tract's elsewhere. Of its 58 concatenations, x86-64 runs one:
/// the 1×1 convolutions read the pieces of the others (`conv::read_concats`), and the last
/// block's final one (read by tract's batch normalisation) runs on medinfer's operator
/// (`concat`); elsewhere tract runs all 58. `densenet121_matches_onnxruntime` checks the
/// numbers.
#[test]
fn densenet121_max_pool_and_concat_operators() {
    let ops = common::load_model("densenet121-chexnet").plan_operators();
    let count = |name: &str| ops.iter().filter(|op| *op == name).count();
    let ours =
        (count("medinfer.MaxPool") + count("medinfer.ConvMaxPool"), count("medinfer.Concat"));
    let tracts = (count("OptMaxPool"), count("Concat"));
    let want = if cfg!(target_arch = "x86_64") { [(1, 1), (0, 0)] } else { [(0, 0), (1, 58)] };
    assert_eq!([ours, tracts], want, "{ops:?}");
}

/// All 120 of DenseNet-121's convolutions run on medinfer's direct convolution on x86-64
/// (`core/src/conv.rs`): the 3×3 ones and the 7×7 stem, and the 1×1 ones with the batch
/// normalisation and ReLU before them (and the bias, average pooling and ReLU after) fused
/// in; of MobileNetV2's, the 3×3 stem and the 26 1×1 ones on images larger than 7 × 7, some
/// of them inside the fused operators (`core/src/fused.rs`: two each in
/// `ConvDepthwiseProject`, one in the others; DenseNet-121's stem in `ConvMaxPool`), and,
/// where the CPU has AVX-512
/// (`DirectConv::run_small`), its eight on 7 × 7 too (elsewhere tract's matrix products).
/// The Spin component's target (wasip2, where these tests also run) keeps tract's; the browser
/// builds run the dense ones above 1×1 and DenseNet's three transitions on it
/// (`web/tests/simd.test.mjs` checks the counts). The
/// `*_matches_onnxruntime` tests check the numbers either way.
#[test]
fn direct_convolutions() {
    for (model, want) in [("densenet121-chexnet", 120), ("mobilenetv2-chexnet", 27)] {
        let ops = common::load_model(model).plan_operators();
        let count = |name: &str| ops.iter().filter(|op| *op == name).count();
        let ours = count("medinfer.Conv")
            + count("medinfer.ConvAdd")
            + count("medinfer.ExpandDepthwise")
            + count("medinfer.DepthwiseProject")
            + 2 * count("medinfer.ConvDepthwiseProject")
            + count("medinfer.ConvMaxPool");
        // Where the CPU has AVX-512: MobileNetV2's eight 1×1 convolutions on 7 × 7 too.
        #[cfg(target_arch = "x86_64")]
        let want = want
            + if std::arch::is_x86_feature_detected!("avx512f") && model.starts_with("mobilenet") {
                8
            } else {
                0
            };
        // Elsewhere tract's throughout.
        #[cfg(not(target_arch = "x86_64"))]
        let want = {
            let _ = want;
            0
        };
        assert_eq!(ours, want, "{model}: {ops:?}");
    }
}

/// The plan names its matrix kernels: tract's own natively, medinfer's 16×8 one on wasm32
/// (`core/src/wasm_mmm.rs`, preferred for every product with more than one column).
#[test]
fn matmul_kernels_are_reported() {
    let kernels = common::load_model("densenet121-chexnet").matmul_kernels();
    assert!(!kernels.is_empty());
    let ours = kernels.iter().any(|k| k == "medinfer_wasm_f32_16x8");
    assert_eq!(ours, cfg!(target_arch = "wasm32"), "{kernels:?}");
}

/// Once `set_threads` started a pool, the CPU plan runs a batch's images side by side (one
/// per thread): the same answers as onnxruntime's, in the batch's order. The batch repeats the
/// test vector's two images in swapped order, so a result put in the wrong slot fails.
#[cfg(feature = "threads")]
#[test]
fn a_batch_on_a_pool_keeps_its_order() {
    medinfer_core::set_threads(2).unwrap();
    let model = common::load_model("mobilenetv2-chexnet");
    let input = common::f32_file("testdata/models/testvec_input_2x3x224x224.f32");
    let expected = common::f32_file("testdata/models/mobilenetv2.testvec_output_ort.f32");
    let (first, second) = input.split_at(input.len() / 2);
    let batch = [second, first, second, first, second].concat();
    let got = model.run_raw(batch, 5).unwrap();
    assert_eq!(got.len(), 5);
    for (i, row) in got.iter().enumerate() {
        let want = &expected[(1 - i % 2) * 14..][..14];
        let max = row.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max <= TOL, "image {i}: max abs diff {max} > {TOL}");
    }
}

#[test]
fn postprocess_sorts_and_labels() {
    let model = common::load_model("mobilenetv2-chexnet");
    let expected = common::f32_file("testdata/models/mobilenetv2.testvec_output_ort.f32");
    let p = model.postprocess(&expected[..14]);
    assert_eq!(p.predictions.len(), 14);
    assert!(p.predictions.windows(2).all(|w| w[0].score >= w[1].score));
    // Reference row 0's largest value is index 11 (Fibrosis) at 0.8525.
    assert_eq!(p.top_label, "Fibrosis");
    assert!((p.confidence_score - 0.852_496).abs() < 1e-5);
}

#[test]
fn wrong_checksum_and_label_count_are_refused() {
    let dir = common::root().join("models/mobilenetv2-chexnet");
    #[allow(clippy::disallowed_methods)]
    let (text, onnx) = (
        std::fs::read_to_string(dir.join("model.toml")).unwrap(),
        std::fs::read(dir.join("model.onnx")).unwrap(),
    );
    let bad_sha = text.replace("93aeb9db", "00000000");
    let m = medinfer_core::ModelManifest::from_toml(&bad_sha).unwrap();
    assert_eq!(
        medinfer_core::LoadedModel::load(m, &onnx).unwrap_err().code(),
        "model.checksum_mismatch"
    );
    let bad_labels = text.replace("\"Hernia\",", "");
    let m = medinfer_core::ModelManifest::from_toml(&bad_labels).unwrap();
    assert_eq!(
        medinfer_core::LoadedModel::load(m, &onnx).unwrap_err().code(),
        "model.manifest_invalid"
    );
    let m = medinfer_core::ModelManifest::from_toml(&text).unwrap();
    assert_eq!(
        medinfer_core::LoadedModel::load(m, &onnx[..1000]).unwrap_err().code(),
        "model.checksum_mismatch"
    );
    let no_sha: String =
        text.lines().filter(|l| !l.starts_with("sha256")).collect::<Vec<_>>().join("\n");
    let m = medinfer_core::ModelManifest::from_toml(&no_sha).unwrap();
    assert_eq!(
        medinfer_core::LoadedModel::load(m, &onnx[..1000]).unwrap_err().code(),
        "model.load_failed"
    );
}

/// A model loaded from its plan form (`core/src/plan_form.rs`) runs the plan the ONNX load
/// built: the same operators (tract's constants aside), the same outputs bit for bit, within
/// `TOL` of onnxruntime's. On x86-64 both bundled models have one; elsewhere (the wasm
/// targets keep tract's convolutions, which the form does not cover) neither.
#[test]
fn the_plan_form_runs_the_same_plan() {
    let input = common::f32_file("testdata/models/testvec_input_2x3x224x224.f32");
    let first = &input[..input.len() / 2];
    for (id, ort_file) in [
        ("densenet121-chexnet", "densenet121_chexnet.testvec_output_ort.f32"),
        ("mobilenetv2-chexnet", "mobilenetv2.testvec_output_ort.f32"),
    ] {
        let dir = common::root().join("models").join(id);
        #[allow(clippy::disallowed_methods)]
        let (text, onnx) = (
            std::fs::read_to_string(dir.join("model.toml")).unwrap(),
            std::fs::read(dir.join("model.onnx")).unwrap(),
        );
        let manifest = || medinfer_core::ModelManifest::from_toml(&text).unwrap();
        let (onnx_model, form) =
            medinfer_core::LoadedModel::load_with_plan_form(manifest(), &onnx).unwrap();
        assert_eq!(form.is_some(), cfg!(target_arch = "x86_64"), "{id}: a plan form or not");
        let Some(form) = form else { continue };
        let model = medinfer_core::LoadedModel::load_plan_form(manifest(), &form).unwrap();
        let ops = |m: &medinfer_core::LoadedModel| {
            let mut ops = m.plan_operators();
            ops.retain(|op| op != "Const");
            ops.sort();
            ops
        };
        assert_eq!(ops(&model), ops(&onnx_model), "{id}");
        assert_eq!(model.output_shape(), onnx_model.output_shape(), "{id}");
        assert_eq!(model.sha256(), onnx_model.sha256(), "{id}");
        let got = model.run_raw(first.to_vec(), 1).unwrap().remove(0);
        assert_eq!(got, onnx_model.run_raw(first.to_vec(), 1).unwrap().remove(0), "{id}");
        let expected = common::f32_file(&format!("testdata/models/{ort_file}"));
        let max = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max <= TOL, "{id}: max abs diff {max} > {TOL}");

        // Refused: another model's sha256 in the manifest, none at all, a damaged payload.
        let other = text.replace(&onnx_model.sha256()[..8], "00000000");
        let m = medinfer_core::ModelManifest::from_toml(&other).unwrap();
        let err = medinfer_core::LoadedModel::load_plan_form(m, &form).unwrap_err();
        assert!(err.to_string().contains("another model file"), "{err}");
        let no_sha: String =
            text.lines().filter(|l| !l.starts_with("sha256")).collect::<Vec<_>>().join("\n");
        let m = medinfer_core::ModelManifest::from_toml(&no_sha).unwrap();
        let err = medinfer_core::LoadedModel::load_plan_form(m, &form).unwrap_err();
        assert_eq!(err.code(), "model.load_failed");
        let mut damaged = form.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0x40;
        let err = medinfer_core::LoadedModel::load_plan_form(manifest(), &damaged).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        // The ONNX bytes are no plan form.
        let err = medinfer_core::LoadedModel::load_plan_form(manifest(), &onnx).unwrap_err();
        assert!(err.to_string().contains("not a medinfer plan form"), "{err}");
    }
}

/// `predict` preprocesses each image straight into the CPU plan's input tensor: the same
/// scores, bit for bit, as preprocessing into one buffer and `run_raw`, for a chunk of two
/// real images (a CT and an RGB secondary capture).
#[test]
fn predict_runs_what_run_raw_runs() {
    use medinfer_core::{DecodeOptions, Limits, NoTimer, decode, predict, preprocess};
    let model = common::load_model("mobilenetv2-chexnet");
    let decoded: Vec<_> = ["CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
        .iter()
        .map(|name| decode(&common::dicom(name), &Limits::default(), &DecodeOptions::default()))
        .collect::<Result<_, _>>()
        .unwrap();
    let images: Vec<_> = decoded.iter().map(|d| &d.image).collect();
    let got = predict(&model, &images, 2, &NoTimer).unwrap();
    let per = model.input_len();
    let mut input = vec![0f32; 2 * per];
    for (image, dst) in images.iter().zip(input.chunks_exact_mut(per)) {
        preprocess::preprocess_into(&image.display(), model.manifest(), dst);
    }
    let raw = model.run_raw(input, 2).unwrap();
    assert_eq!(got.len(), 2);
    for ((prediction, _), raw) in got.iter().zip(&raw) {
        assert_eq!(prediction, &model.postprocess(raw));
    }
    assert_ne!(got[0].0, got[1].0, "two images, two answers");
}
