#!/usr/bin/env bash
# Every sweep that docs/results/claims.yaml reads, each into the folder the claims file names, then
# the claims page. Run from the repository root (`make claims`). A sweep whose folder is already
# finished is skipped job by job (sweeps resume), so an interrupted run of this script picks up
# where it stopped. MNIST/Fashion-MNIST are read from DATA_ROOT (docs/configuration.md).
# The cheap census sweeps come first, the conv OOD sweep (about an hour on a 2-core CPU) last.
set -euo pipefail
python="${PYTHON:-.venv/bin/python}"
root=outputs/multiruns

sweep() {  # sweep <folder> <overrides...>
  local folder=$1
  shift
  echo "== $folder"
  "$python" -m src.run -m "$@" "hydra.sweep.dir=$root/$folder"
}

sweep claims/census_ca_w2 experiment=census_ca_2x2 'seed=range(0,1000)' hydra/launcher=batched
sweep claims/census_vae_literal_2x2 experiment=census_vae_literal_2x2 'seed=range(0,1000)' hydra/launcher=batched
sweep census_vae_bce experiment=census_vae_2x2 'seed=range(0,1000)' model.reconstruction=bce \
  model.beta=1.0,0.1 hydra/launcher=batched
sweep claims/census_ca_w2_latent2 experiment=census_ca_2x2 'seed=range(0,1000)' model.latent_dim=2 \
  hydra/launcher=batched
sweep claims/census_ca_widths experiment=census_ca_2x2 'seed=range(0,500)' \
  'model.net.hidden_dims=[4],[8],[32],[128]' hydra/launcher=batched
# The census's merged runs with no identical layer, trained ten times as long: do they stay merged?
merged=$("$python" -c "
import json, pathlib
folder = pathlib.Path('$root/claims/census_ca_w2')
runs = [json.loads(path.read_text()) for path in folder.glob('*/metrics.json')]
print(','.join(str(run['seed']) for run in sorted(runs, key=lambda run: run['seed'])
               if run['test/outcome'] in ('one_merged_pair', 'two_merged_pairs')
               and 'no identical layer' in run.get('test/merge_reason', '')))")
sweep claims/census_ca_w2_long experiment=census_ca_2x2 "seed=$merged" trainer.max_epochs=50000 \
  trainer.check_val_every_n_epoch=5000 callbacks.last_checkpoint.every_n_epochs=5000 hydra/launcher=batched
sweep claims/lines_ca_v2 experiment=census_lines_ca 'seed=range(0,200)' hydra/launcher=batched
sweep claims/lines_vae_literal_v2 experiment=census_lines_vae_literal 'seed=range(0,200)' hydra/launcher=batched
sweep claims/lines_vae_beta1 experiment=census_lines_vae 'seed=range(0,20)' hydra/launcher=batched
sweep claims/lines_vae_beta1_warmup experiment=census_lines_vae 'seed=range(0,20)' model.kl_warmup_steps=3200 \
  hydra/launcher=batched
quiet=(logger=none print_config=false trainer.enable_progress_bar=false)
sweep claims/table1_mnist_e3 experiment=table1_mnist trainer.max_epochs=3 "${quiet[@]}"
sweep claims/table1_vae_leaky_e1 experiment=table1_mnist trainer.max_epochs=1 model.reconstruction=mse \
  model.final_activation=leaky_relu model.standardize_inputs=false,true "${quiet[@]}" \
  hydra.sweeper.params.model=vae
sweep ood_mnist_vae_conv_20 experiment=ood_mnist_vae 'seed=range(0,20)' hydra/launcher=batched
# Fashion-MNIST's recall per class, from the conv sweep's checkpoints.
checkpoints=$(printf "$root/ood_mnist_vae_conv_20/%s/checkpoints/last.ckpt," $(seq 0 19))
echo "== claims/ood_conv_reeval"
"$python" -m src.eval -m "ckpt_path=${checkpoints%,}" figures=false '+overrides.ood.sets=[fashion_mnist]' \
  "hydra.sweep.dir=$root/claims/ood_conv_reeval"
"$python" -m src.results claims docs/results/claims.yaml --output docs/results/claims.md \
  --title 'Every claim of both reports, measured'
