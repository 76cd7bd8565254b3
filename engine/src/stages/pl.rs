//! `kind: pl`: Prospective Learning (SPEC sections 1-4), the closed-form ridge update of every
//! layer towards its prospective target. The step itself is `plflow_ops::pl`.

use super::trainer::{add_trainer, trainer_spec};
use super::{Builder, Stage};
use crate::error::SpecError;
use crate::plan::{MemoryEstimate, estimate_pl};
use crate::solver::{LayerWork, Method, Solver};
use crate::spec::defaults;
use petgraph::graph::NodeIndex;
use plflow_ops::network::Network;
use plflow_ops::pl::PlTrainer;
use plflow_ops::pl::{ErrorScale, PlConfig};
use plflow_ops::solve::{Delivery, Precision, RidgeConfig, RidgeScale, SolvePath, workspace_bytes};
use plflow_ops::state::Trainer;
use plflow_ops::update::{Metaplasticity, Orthogonalize, Storage, UpdateRule};
use serde::{Deserialize, Serialize};

/// How `lambda` is read (see `plflow_ops::solve::RidgeScale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LambdaScale {
    /// `lambda` times the mean diagonal of the Gram matrix: follows the data's scale.
    Relative,
    /// `lambda` as it is (the paper's literal setting).
    Absolute,
}

/// Which system the solve factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SolveSpec {
    /// The smaller of the two.
    Auto,
    /// The `(d+1) x (d+1)` Gram.
    Primal,
    /// The `n x n` kernel.
    Dual,
}

/// How the momentum is stored between steps (see `plflow_ops::update::Storage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StorageSpec {
    /// `f32` values.
    F32,
    /// `bf16` values: half the bytes, rounded after every update. The default: the shipped
    /// pipelines reach the accuracy of `f32` momentum with it (README, "Speed and memory").
    #[default]
    Bf16,
}

/// The arithmetic of the PL solve (see `plflow_ops::solve::Precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrecisionSpec {
    /// `f32` where the ridge bounds the condition number well enough, else `f64`.
    #[default]
    Auto,
    /// Always `f64`.
    F64,
}

trainer_spec! {
    /// `kind: pl`: Prospective Learning. Components set to `null` are switched off.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct PlSpec {
        /// Step size of the solved update.
        #[serde(default = "defaults::alpha")]
        pub alpha: f64,
        /// Ridge added to the Gram diagonal, read according to `lambda_scale`.
        #[serde(default = "defaults::lambda")]
        pub lambda: f64,
        /// `relative` (default) or `absolute` (the paper's literal setting).
        #[serde(default = "defaults::lambda_scale")]
        pub lambda_scale: LambdaScale,
        /// Which system to factor.
        #[serde(default = "defaults::solve")]
        pub solve: SolveSpec,
        /// `auto` (f32 where the ridge bounds the condition number by 1000, else f64) or `f64`.
        #[serde(default)]
        pub precision: PrecisionSpec,
        /// Metaplasticity (paper eq. 16-19); `null` switches it off, `{}` takes the paper's settings.
        #[serde(default = "defaults::metaplasticity")]
        pub metaplasticity: Option<MetaplasticitySpec>,
        /// Momentum coefficient; `null` switches momentum off.
        #[serde(default = "defaults::momentum")]
        pub momentum: Option<f32>,
        /// `bf16` (default) or `f32`: how the momentum is stored between steps (the
        /// arithmetic is `f32`; `bf16` halves the momentum's memory).
        #[serde(default)]
        pub momentum_precision: StorageSpec,
        /// Newton-Schulz orthogonalisation of the momentum; `null` switches it off.
        #[serde(default = "defaults::orthogonalize")]
        pub orthogonalize: Option<OrthogonalizeSpec>,
        /// Largest spectral norm of each weight matrix; `null` switches the clamp off.
        #[serde(default = "defaults::spectral_max")]
        pub spectral_max: Option<f32>,
        /// Label smoothing `eps` of the targets.
        #[serde(default = "defaults::label_smoothing")]
        pub label_smoothing: f32,
        /// The size of the error each hidden layer solves for: `raw` (default, the paper's rule)
        /// or `output` (rescaled to the output error's root mean square; needed by deep stacks
        /// such as the CNN).
        #[serde(default)]
        pub error_scale: ErrorScaleSpec,
        /// Per-epoch factor of `alpha`: epoch `k` (from 1) uses `alpha * alpha_decay^(k-1)`;
        /// 1 (the default) keeps the step constant.
        #[serde(default = "defaults::alpha_decay")]
        pub alpha_decay: f64,
    }
}

/// See `plflow_ops::pl::ErrorScale`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorScaleSpec {
    /// The backpropagated error as it is.
    #[default]
    Raw,
    /// Rescaled to the output error's root mean square.
    Output,
}

/// Metaplasticity settings (defaults from SPEC section 5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetaplasticitySpec {
    /// Decay of each weight's activity trace.
    #[serde(default = "defaults::mp_beta")]
    pub beta: f32,
    /// Sensitivity of the modulation to the trace.
    #[serde(default = "defaults::mp_gamma")]
    pub gamma: f32,
    /// Traces below this count as inactive and are boosted.
    #[serde(default = "defaults::mp_tau_inactive")]
    pub tau_inactive: f32,
    /// Boost factor of inactive weights.
    #[serde(default = "defaults::mp_xi")]
    pub xi: f32,
    /// Initial trace.
    #[serde(default = "defaults::mp_theta0")]
    pub theta0: f32,
}

/// Orthogonalisation settings (defaults from SPEC section 5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrthogonalizeSpec {
    /// Period in steps.
    #[serde(default = "defaults::ortho_every")]
    pub every: u64,
    /// Blend `s` in `V <- (1 - s) V + s NS(V)`.
    #[serde(default = "defaults::ortho_strength")]
    pub strength: f32,
}

impl Stage for PlSpec {
    fn input(&self) -> Option<&str> {
        Some(&self.input)
    }

    fn build(&self, name: &str, b: &mut Builder<'_>) -> Result<NodeIndex, SpecError> {
        let solver = self.solver(name, b)?;
        let fields = self.trainer_fields();
        add_trainer(b, name, solver, fields)
    }
}

impl PlSpec {
    /// The solver these settings describe, every value checked.
    fn solver(&self, name: &str, b: &Builder<'_>) -> Result<Solver, SpecError> {
        b.range(name, "alpha", self.alpha > 0.0 && self.alpha.is_finite(), "> 0", self.alpha)?;
        b.range(
            name,
            "lambda",
            self.lambda > 0.0 && self.lambda.is_finite(),
            "> 0 (the solve needs a positive ridge)",
            self.lambda,
        )?;
        if let Some(m) = self.momentum {
            b.range(name, "momentum", (0.0..1.0).contains(&m), "in [0, 1) or null", m)?;
        }
        if let Some(m) = &self.metaplasticity {
            b.range(name, "metaplasticity", (0.0..1.0).contains(&m.beta), "a beta in [0, 1)", m.beta)?;
            b.range(name, "metaplasticity", m.gamma >= 0.0 && m.xi > 0.0, "gamma >= 0 and xi > 0", m.xi)?;
        }
        if let Some(o) = &self.orthogonalize {
            b.range(name, "orthogonalize", o.every > 0, "a period `every` of at least 1", o.every)?;
            b.range(
                name,
                "orthogonalize",
                (0.0..=1.0).contains(&o.strength),
                "a strength in [0, 1]",
                o.strength,
            )?;
        }
        if let Some(m) = self.spectral_max {
            b.range(name, "spectral_max", m > 0.0 && m.is_finite(), "> 0 or null", m)?;
        }
        b.range(
            name,
            "alpha_decay",
            self.alpha_decay > 0.0 && self.alpha_decay <= 1.0,
            "in (0, 1]",
            self.alpha_decay,
        )?;
        b.range(
            name,
            "label_smoothing",
            (0.0..1.0).contains(&self.label_smoothing),
            "in [0, 1)",
            self.label_smoothing,
        )?;
        Ok(Solver::new(PlConfig {
            ridge: RidgeConfig {
                alpha: self.alpha,
                lambda: self.lambda,
                scale: match self.lambda_scale {
                    LambdaScale::Relative => RidgeScale::Relative,
                    LambdaScale::Absolute => RidgeScale::Absolute,
                },
                path: match self.solve {
                    SolveSpec::Auto => SolvePath::Auto,
                    SolveSpec::Primal => SolvePath::Primal,
                    SolveSpec::Dual => SolvePath::Dual,
                },
                precision: match self.precision {
                    PrecisionSpec::Auto => Precision::Auto,
                    PrecisionSpec::F64 => Precision::F64,
                },
                error_checked: false,
            },
            rule: UpdateRule {
                metaplasticity: self.metaplasticity.map(|m| Metaplasticity {
                    beta: m.beta,
                    gamma: m.gamma,
                    tau_inactive: m.tau_inactive,
                    xi: m.xi,
                    theta0: m.theta0,
                }),
                momentum: self.momentum,
                momentum_storage: match self.momentum_precision {
                    StorageSpec::F32 => Storage::F32,
                    StorageSpec::Bf16 => Storage::Bf16,
                },
                orthogonalize: self
                    .orthogonalize
                    .map(|o| Orthogonalize { every: o.every, strength: o.strength }),
                spectral_max: self.spectral_max,
            },
            label_smoothing: self.label_smoothing,
            alpha_decay: self.alpha_decay,
            error_scale: match self.error_scale {
                ErrorScaleSpec::Raw => ErrorScale::Raw,
                ErrorScaleSpec::Output => ErrorScale::Output,
            },
        }))
    }
}

impl Method for PlConfig {
    fn kind(&self) -> &'static str {
        "pl"
    }

    fn describe(&self) -> String {
        let r = &self.ridge;
        let scale = match r.scale {
            RidgeScale::Relative => "relative to the mean Gram diagonal",
            RidgeScale::Absolute => "absolute",
        };
        let mut s = format!(
            "Prospective Learning, alpha {}, lambda {} ({scale}), momentum {}, spectral max {}, {} errors",
            r.alpha,
            r.lambda,
            self.rule.momentum.map_or("off".into(), |m| m.to_string()),
            self.rule.spectral_max.map_or("off".into(), |m| m.to_string()),
            match self.error_scale {
                ErrorScale::Raw => "raw",
                ErrorScale::Output => "output-scaled",
            },
        );
        if self.alpha_decay < 1.0 {
            s += &format!(", alpha x{} per epoch", self.alpha_decay);
        }
        if self.rule.momentum.is_some() && self.rule.momentum_storage == Storage::Bf16 {
            s += ", momentum stored in bf16";
        }
        s
    }

    fn settings(&self) -> serde_json::Map<String, serde_json::Value> {
        let v = serde_json::json!({
            "alpha": self.ridge.alpha,
            "lambda": self.ridge.lambda,
            "lambda_scale": format!("{:?}", self.ridge.scale).to_lowercase(),
            "solve": format!("{:?}", self.ridge.path).to_lowercase(),
            "momentum": self.rule.momentum,
            "momentum_precision": format!("{:?}", self.rule.momentum_storage).to_lowercase(),
            "spectral_max": self.rule.spectral_max,
            "label_smoothing": self.label_smoothing,
            "error_scale": format!("{:?}", self.error_scale).to_lowercase(),
            "alpha_decay": self.alpha_decay,
        });
        let serde_json::Value::Object(map) = v else { unreachable!("a JSON object literal") };
        map
    }

    fn trainer(&self, network: &Network) -> Box<dyn Trainer> {
        Box::new(PlTrainer::new(network, *self))
    }

    fn estimate(&self, dims: &[(usize, usize)], input_len: usize, batch: usize) -> MemoryEstimate {
        estimate_pl(dims, input_len, batch, self)
    }

    fn state_per_parameter(&self) -> f64 {
        let momentum = match self.rule.momentum_storage {
            Storage::F32 => 1.0,
            Storage::Bf16 => 0.5,
        };
        self.rule.momentum.map_or(0.0, |_| momentum) + self.rule.metaplasticity.map_or(0.0, |_| 1.0)
    }

    fn update_bytes(&self, w: &LayerWork) -> usize {
        let route = self.ridge.planned_route(w.rows, w.inputs);
        workspace_bytes(w.rows, w.inputs, w.units, route, Delivery::Whole)
    }

    fn reports_residual(&self) -> bool {
        true
    }

    fn pl(&self) -> Option<&PlConfig> {
        Some(self)
    }
}
