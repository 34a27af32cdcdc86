//! Engine tests on the committed example models.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use coscale_api::v2::{Datatype, RequestedOutput, TensorData};
use coscale_runtime::{Engine, ModelState, RuntimeError, TensorMetadata};

fn engine_with(models: &[&str]) -> Engine {
    let engine = Engine::new();
    for m in models {
        engine.load(m, &models_dir().join(m)).unwrap();
    }
    engine
}

fn labels(engine: &Engine, model: &str, rows: &[[f32; 4]]) -> Vec<i64> {
    let resp = engine.infer(model, &iris_request(rows)).unwrap();
    let label = resp.outputs.iter().find(|o| o.name == "label").unwrap();
    assert_eq!(label.shape, vec![rows.len() as i64]);
    match &label.data {
        TensorData::Int64(v) => v.clone(),
        other => panic!("label is not INT64: {other:?}"),
    }
}

#[test]
fn metadata_reports_the_onnx_inputs_and_outputs_with_a_dynamic_batch() {
    let engine = Engine::new();
    let meta = engine.load("iris", &models_dir().join("iris")).unwrap();
    assert_eq!(meta.platform, "onnx");
    assert_eq!(meta.versions, vec!["1"]);
    assert_eq!(
        meta.inputs,
        vec![TensorMetadata {
            name: "input".into(),
            datatype: Datatype::Fp32,
            shape: vec![-1, 4]
        }]
    );
    let outputs: Vec<(&str, Datatype, &[i64])> = meta
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), o.datatype, o.shape.as_slice()))
        .collect();
    assert_eq!(
        outputs,
        vec![
            ("label", Datatype::Int64, &[-1][..]),
            ("probabilities", Datatype::Fp32, &[-1, 3][..])
        ]
    );
    assert_eq!(engine.metadata("iris"), Some(meta));
}

#[test]
fn iris_predicts_the_labels_sklearn_predicted_for_batches_of_one_and_three_and_five() {
    let engine = engine_with(&["iris"]);
    for (i, row) in ROWS.iter().enumerate() {
        assert_eq!(labels(&engine, "iris", &[*row]), vec![IRIS_LABELS[i]]);
    }
    assert_eq!(
        labels(&engine, "iris", &ROWS[..3]),
        IRIS_LABELS[..3].to_vec()
    );
    assert_eq!(labels(&engine, "iris", &ROWS), IRIS_LABELS.to_vec());
}

#[test]
fn iris_mlp_predicts_the_labels_sklearn_predicted() {
    let engine = engine_with(&["iris-mlp"]);
    assert_eq!(
        labels(&engine, "iris-mlp", &ROWS[..1]),
        IRIS_MLP_LABELS[..1].to_vec()
    );
    assert_eq!(
        labels(&engine, "iris-mlp", &ROWS[2..5]),
        IRIS_MLP_LABELS[2..5].to_vec()
    );
    assert_eq!(labels(&engine, "iris-mlp", &ROWS), IRIS_MLP_LABELS.to_vec());
}

#[test]
fn probabilities_match_sklearn_and_echo_the_request_id() {
    let engine = engine_with(&["iris"]);
    let resp = engine.infer("iris", &iris_request(&ROWS[..1])).unwrap();
    assert_eq!(resp.model_name, "iris");
    assert_eq!(resp.model_version.as_deref(), Some("1"));
    assert_eq!(resp.id.as_deref(), Some("req-1"));
    let probs = resp
        .outputs
        .iter()
        .find(|o| o.name == "probabilities")
        .unwrap();
    assert_eq!(probs.shape, vec![1, 3]);
    let TensorData::Fp32(p) = &probs.data else {
        panic!("probabilities are not FP32")
    };
    for (got, want) in p.iter().zip([0.981579f32, 0.018421, 0.0]) {
        assert!((got - want).abs() < 1e-5, "{p:?}");
    }
}

#[test]
fn requested_outputs_are_returned_alone_and_in_order() {
    let engine = engine_with(&["iris"]);
    let mut req = iris_request(&ROWS[..2]);
    req.outputs = vec![
        RequestedOutput {
            name: "probabilities".into(),
            ..Default::default()
        },
        RequestedOutput {
            name: "label".into(),
            ..Default::default()
        },
    ];
    let names: Vec<String> = engine
        .infer("iris", &req)
        .unwrap()
        .outputs
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, vec!["probabilities", "label"]);
    req.outputs = vec![RequestedOutput {
        name: "nope".into(),
        ..Default::default()
    }];
    let err = engine.infer("iris", &req).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::BadInput(m) if m.contains("unknown output 'nope'")),
        "{err}"
    );
}

#[test]
fn wrong_shape_datatype_or_name_is_bad_input() {
    let engine = engine_with(&["iris"]);
    let mut req = iris_request(&ROWS[..1]);
    req.inputs[0].shape = vec![2, 2];
    let err = engine.infer("iris", &req).unwrap_err();
    assert_eq!(
        err,
        RuntimeError::BadInput(
            "input 'input' has shape [2, 2] but the model expects [-1, 4] (-1 = any size)".into()
        )
    );

    let mut req = iris_request(&ROWS[..1]);
    req.inputs[0].datatype = Datatype::Fp64;
    req.inputs[0].data = TensorData::Fp64(vec![1.0; 4]);
    let err = engine.infer("iris", &req).unwrap_err();
    assert_eq!(
        err,
        RuntimeError::BadInput("input 'input' must be FP32 but is FP64".into())
    );

    let mut req = iris_request(&ROWS[..1]);
    req.inputs[0].name = "x".into();
    let err = engine.infer("iris", &req).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::BadInput(m) if m.contains("unknown input 'x'")),
        "{err}"
    );
}

#[test]
fn unknown_and_unloaded_models_are_not_found() {
    let engine = engine_with(&["iris"]);
    assert_eq!(
        engine
            .infer("missing", &iris_request(&ROWS[..1]))
            .unwrap_err(),
        RuntimeError::NotFound("missing".into())
    );
    engine.unload("iris").unwrap();
    assert!(!engine.ready("iris"));
    assert_eq!(
        engine.infer("iris", &iris_request(&ROWS[..1])).unwrap_err(),
        RuntimeError::NotFound("iris".into())
    );
    assert_eq!(
        engine.unload("iris").unwrap_err(),
        RuntimeError::NotFound("iris".into())
    );
    let index = engine.index();
    assert_eq!(index.len(), 1);
    assert_eq!(
        (index[0].state, index[0].reason.as_str()),
        (ModelState::Unavailable, "unloaded")
    );
}

#[test]
fn corrupt_artifact_is_an_artifact_error_and_other_models_keep_serving() {
    let engine = engine_with(&["iris"]);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("model.onnx");
    std::fs::write(&bad, b"this is not a protobuf \xff\xfe").unwrap();
    let err = engine.load("broken", dir.path()).unwrap_err();
    assert!(
        matches!(&err, RuntimeError::Artifact { path, .. } if *path == bad),
        "{err}"
    );
    assert!(!engine.ready("broken"));
    assert_eq!(labels(&engine, "iris", &ROWS[..1]), vec![IRIS_LABELS[0]]);
    let broken = engine
        .index()
        .into_iter()
        .find(|e| e.name == "broken")
        .unwrap();
    assert_eq!(broken.state, ModelState::Unavailable);
    assert!(
        broken.reason.contains("cannot load model"),
        "{}",
        broken.reason
    );
}

#[test]
fn missing_artifact_or_folder_without_onnx_is_an_artifact_error() {
    let engine = Engine::new();
    let dir = tempfile::tempdir().unwrap();
    let err = engine
        .load("m", &dir.path().join("absent.onnx"))
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Artifact { .. }), "{err}");
    let err = engine.load("m", dir.path()).unwrap_err();
    assert!(err.to_string().contains("holds no .onnx file"), "{err}");
}

#[test]
fn a_plain_onnx_file_path_loads_and_model_names_are_checked() {
    let engine = Engine::new();
    let file = models_dir().join("iris/model.onnx");
    engine.load("iris_v1.a-b", &file).unwrap();
    assert!(engine.ready("iris_v1.a-b"));
    for bad in ["", ".", "..", "a/b", "a b"] {
        assert!(
            matches!(engine.load(bad, &file), Err(RuntimeError::BadName(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn engine_serves_from_many_threads_at_once() {
    let engine = std::sync::Arc::new(engine_with(&["iris"]));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    let row = (t + i) % ROWS.len();
                    assert_eq!(
                        labels(&engine, "iris", &[ROWS[row]]),
                        vec![IRIS_LABELS[row]]
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// The same answers inline (current-thread runtime, or a measured fast model) and with the
/// worker handed over (the first, unmeasured inference on a multi-thread runtime); an unknown
/// model is not found either way.
#[test]
fn infer_on_worker_answers_like_infer_on_either_runtime_flavour() {
    let engine = std::sync::Arc::new(engine_with(&["iris"]));
    let rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]];
    let expected = engine.infer("iris", &iris_request(&rows)).unwrap();
    let current = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    for runtime in [&current, &multi] {
        for _ in 0..3 {
            let engine = engine.clone();
            let got = runtime
                .block_on(async move { engine.infer_on_worker("iris", &iris_request(&rows)).await })
                .unwrap();
            assert_eq!(got.outputs, expected.outputs);
        }
    }
    let err = current
        .block_on(engine.infer_on_worker("nope", &iris_request(&rows)))
        .unwrap_err();
    assert!(matches!(err, RuntimeError::NotFound(_)), "{err:?}");
}

/// Inferences predicted to fit the inline budget run inline, on the workers that read them,
/// but never on every worker at once: a task spawned while as many long inline inferences are
/// under way as the runtime has workers runs before any of them ends (with every worker
/// computing inline it would wait for one of them to finish). With two workers one computes
/// and the other stays free; with one, the inference hands its worker over.
#[test]
fn inline_inferences_leave_a_worker_free() {
    let batch: Vec<[f32; 4]> = ROWS.iter().copied().cycle().take(5_000).collect();
    for workers in [2, 1] {
        // A fresh engine: its inline slots are counted from the first runtime that uses it.
        let engine = std::sync::Arc::new(Engine::with_inline_budget(
            std::time::Duration::from_secs(60),
        ));
        engine
            .load("iris-mlp", &models_dir().join("iris-mlp"))
            .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .build()
            .unwrap();
        let batch = batch.clone();
        runtime.block_on(async move {
            // Measured once, so that the next ones are predicted to fit (the budget is a minute).
            engine
                .infer_on_worker("iris-mlp", &iris_request(&batch))
                .await
                .unwrap();
            let started = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
            let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let inferences: Vec<_> = (0..workers)
                .map(|_| {
                    let (engine, batch) = (engine.clone(), batch.clone());
                    let (started, finished) = (started.clone(), finished.clone());
                    tokio::spawn(async move {
                        started.add_permits(1);
                        engine
                            .infer_on_worker("iris-mlp", &iris_request(&batch))
                            .await
                            .unwrap();
                        finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    })
                })
                .collect();
            // Every inference task is on a worker before the probe is spawned.
            started.acquire_many(workers as u32).await.unwrap().forget();
            let seen = {
                let finished = finished.clone();
                tokio::spawn(async move { finished.load(std::sync::atomic::Ordering::SeqCst) })
                    .await
                    .unwrap()
            };
            assert_eq!(
                seen, 0,
                "{workers} worker(s): the probe waited for an inference"
            );
            for i in inferences {
                i.await.unwrap();
            }
        });
    }
}
