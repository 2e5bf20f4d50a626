//! Concatenation of f32 tensors: medinfer's own operator in place of tract's `Concat` in the
//! CPU plan, so that the copy is shared across tract's executor where it has threads.
//!
//! DenseNet-121 concatenates its growing feature maps after every layer: about 40 MB copied
//! per image, one thread's memcpy in tract (2.4–3.0 ms of a 37–43 ms run on two threads, the
//! 2-core Zen 4 VM). Here the output is cut into chunks of whole cache lines and each chunk
//! copies the parts of the inputs that land in it.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::TypedConcat;

/// Output values per chunk shared out: 16 KiB.
const CHUNK: usize = 4096;

/// A concatenation of f32 tensors along `axis` (all inputs of the same rank, equal elsewhere).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Concat {
    axis: usize,
}

/// Replaces every `Concat` of `model` whose inputs are f32 with concrete shapes, in place.
/// Returns how many.
pub fn substitute(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(axis) = node.op_as::<TypedConcat>().map(|c| c.axis) else { continue };
        let covered = {
            let facts = model.node_input_facts(id)?;
            facts.len() >= 2
                && facts.iter().all(|f| f.datum_type == f32::datum_type() && f.shape.is_concrete())
        };
        if !covered {
            continue;
        }
        model.node_mut(id).op = Box::new(Concat { axis });
        replaced += 1;
    }
    Ok(replaced)
}

impl Concat {
    /// The operator's fields as numbers, for the plan form ([`crate::plan_form`]).
    pub(crate) fn to_words(&self) -> Vec<u64> {
        vec![self.axis as u64]
    }

    /// The axis it concatenates along.
    pub(crate) fn axis(&self) -> usize {
        self.axis
    }

    /// The operator [`Concat::to_words`] gave these numbers for.
    pub(crate) fn from_words(w: &[u64]) -> Option<Concat> {
        let [axis] = *w else { return None };
        Some(Concat { axis: usize::try_from(axis).ok().filter(|&a| a < 8)? })
    }

    /// Writes `out`, the output's values from `start` on, from `inputs` (each `outer` blocks
    /// of its own length, the output's blocks their concatenation).
    fn copy(inputs: &[&[f32]], outer: usize, start: usize, out: &mut [f32]) {
        let block: usize = inputs.iter().map(|v| v.len() / outer).sum();
        if block == 0 {
            return;
        }
        let end = start + out.len();
        let mut at = start / block * block;
        for o in start / block..outer {
            for v in inputs {
                let len = v.len() / outer;
                let (from, to) = (at.max(start), (at + len).min(end));
                if from < to {
                    out[from - start..to - start]
                        .copy_from_slice(&v[o * len + from - at..][..to - from]);
                }
                at += len;
                if at >= end {
                    return;
                }
            }
        }
    }
}

impl Op for Concat {
    fn name(&self) -> StaticName {
        "medinfer.Concat".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axis {}", self.axis)])
    }

    op_as_typed_op!();
}

impl EvalOp for Concat {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let Some(first) = inputs.first() else { bail!("{}: no input", self.name()) };
        let mut shape: TVec<usize> = first.shape().into();
        if self.axis >= shape.len()
            || inputs.iter().any(|v| {
                v.rank() != shape.len()
                    || v.shape().iter().enumerate().any(|(a, &d)| a != self.axis && d != shape[a])
            })
        {
            bail!("{}: inputs of unexpected shapes", self.name());
        }
        shape[self.axis] = inputs.iter().map(|v| v.shape()[self.axis]).sum();
        let outer: usize = shape[..self.axis].iter().product();
        let slices = inputs
            .iter()
            .map(|v| v.try_as_plain_ram()?.as_slice::<f32>())
            .collect::<TractResult<TVec<&[f32]>>>()?;
        // SAFETY: f32 has no invalid bit patterns, and the chunks cover every value.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        if outer > 0 {
            let mut view = output.try_as_plain_ram_mut()?;
            let out = view.as_slice_mut::<f32>()?;
            let total = out.len();
            #[cfg(feature = "threads")]
            tract_linalg::multithread::par_chunks_mut(out, CHUNK, total, |first, chunk| {
                Concat::copy(&slices, outer, first * CHUNK, chunk);
                Ok(())
            })?;
            #[cfg(not(feature = "threads"))]
            {
                let _ = (total, CHUNK);
                Concat::copy(&slices, outer, 0, out);
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for Concat {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        TypedConcat { axis: self.axis }.output_facts(inputs)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Along each axis, of inputs of several lengths there, the output is tract's exactly,
    /// whatever the chunks it is copied in.
    #[test]
    fn matches_tract_along_every_axis() {
        for axis in 0..3 {
            let shapes: [[usize; 3]; 3] = std::array::from_fn(|i| {
                let mut s = [3, 5, 7];
                s[axis] = [1, 4, 9][i] + axis;
                s
            });
            let inputs: Vec<Tensor> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let n = s.iter().product::<usize>();
                    let v: Vec<f32> = (0..n).map(|j| (i * 1000 + j) as f32).collect();
                    tensor1(&v).into_shape(s).expect("shape")
                })
                .collect();
            let values = |t: &Tensor| -> Vec<f32> {
                t.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).expect("f32").to_vec()
            };
            let want = Tensor::stack_tensors(axis, &inputs).expect("tract");
            let outer: usize = want.shape()[..axis].iter().product();
            let want = values(&want);
            let owned: Vec<Vec<f32>> = inputs.iter().map(values).collect();
            let slices: Vec<&[f32]> = owned.iter().map(Vec::as_slice).collect();
            for chunk in [1, 2, 5, 16, want.len()] {
                let mut got = vec![f32::NAN; want.len()];
                for (k, out) in got.chunks_mut(chunk).enumerate() {
                    Concat::copy(&slices, outer, k * chunk, out);
                }
                assert_eq!(got, want, "axis {axis}, chunks of {chunk}");
            }
            let mut model = TypedModel::default();
            let wires: TVec<OutletId> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| model.add_source(format!("x{i}"), f32::fact(s)).expect("source"))
                .collect();
            let y = model.wire_node("concat", TypedConcat::new(axis), &wires).expect("concat");
            model.select_output_outlets(&y).expect("outputs");
            assert_eq!(substitute(&mut model).expect("substitute"), 1);
            let plan = model.into_optimized().and_then(|m| m.into_runnable()).expect("plan");
            let got = plan.run(inputs.into_iter().map(|t| t.into_tvalue()).collect()).expect("run");
            assert_eq!(values(&got[0]), want, "axis {axis}, plan");
        }
    }
}
