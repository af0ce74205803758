#!/usr/bin/env bash
# Draw the figures and tables of README's results report into docs/, from the committed TensorBoard logs
# (benchmarks/runs) or from your own: RUNS=runs bash benchmarks/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-benchmarks/runs}
plot() { python plot.py "$RUNS" --out docs "$@" > /dev/null; }

# returns at each budget, with the published returns as dashed lines
plot --name offpolicy_halfcheetah_100k --match '^HalfCheetah-v4__(sac|td3|ddpg)__[1-3]$' --max-step 100000 --reference
plot --name offpolicy_halfcheetah_300k --match '^HalfCheetah-v4__(sac|td3|ddpg)__[1-3]$' --reference
plot --name offpolicy_hopper_100k --match '^Hopper-v4__(sac|td3|ddpg)__[1-3]$' --max-step 100000 --reference
plot --name offpolicy_walker2d_100k --match '^Walker2d-v4__(sac|td3|ddpg)__[12]$' --max-step 100000 --reference
plot --name onpolicy_1m --match '^(HalfCheetah|Hopper|Walker2d)-v4__(ppo|a2c)__[0-9]+$' --reference --assume log-std-init=0.0

# experiments
plot --name exp_temperature --match '^HalfCheetah-v4__(sac|td3|ddpg)(__alpha=0.2_no-autotune)?__[1-3]$' --max-step 100000 --group-by autotune
plot --name exp_sac_precision --match '^HalfCheetah-v4__sac(__precision=bfloat16)?__[0-9]+$' --max-step 100000 --group-by precision --assume precision=float32
plot --name exp_ppo_norm_obs --match '^Hopper-v4__ppo(__no-norm-obs)?__[12]$' --group-by norm_obs
plot --name exp_ppo_num_envs --match '^Hopper-v4__ppo(__num-envs=[0-9]+_num-steps=[0-9]+)?__[12]$' --group-by num_envs num_steps
plot --name exp_ppo_log_std --match '^(HalfCheetah|Hopper|Walker2d)-v4__ppo(__log-std-init=-1.0|__log-std-init=-0.5)?__[0-9]+$' --group-by log_std_init --assume log-std-init=0.0
plot --name exp_a2c_entropy --match '^(HalfCheetah|Hopper|Walker2d)-v4__a2c(__ent-coef=0.01_log-std-init=-0.5)?__[0-9]+$' --group-by ent_coef log_std_init --assume log-std-init=0.0
plot --name exp_a2c_log_std --match '^(HalfCheetah|Hopper|Walker2d)-v4__a2c(__log-std-init=-1|__log-std-init=-0.5)?__[0-9]+$' --group-by log_std_init --assume log-std-init=0.0
plot --name exp_a2c_num_envs --match '^(HalfCheetah|Hopper|Walker2d)-v4__a2c(__num-envs=4)?__[0-9]+$' --group-by num_envs --assume log-std-init=0.0
plot --name exp_ppo_sb3 --match '^HalfCheetah-v4__(ppo|sb3_ppo)__[0-9]+$' --assume log-std-init=0.0
plot --name exp_a2c_sb3 --match '^HalfCheetah-v4__(a2c|sb3_a2c)__[0-9]+$' --assume log-std-init=0.0
plot --name exp_offpolicy_sb3 --match '^HalfCheetah-v4__(td3|ddpg|sb3_td3|sb3_ddpg)__[1-3]$' --max-step 100000
plot --name exp_paper_settings_100k --match '^HalfCheetah-v4__(td3|ddpg)(__batch-size=100_hidden-sizes=400,300_learning-start-1015d28d)?__[1-3]$' --max-step 100000 --group-by batch_size
plot --name exp_paper_settings_300k --match '^HalfCheetah-v4__td3(__batch-size=100_hidden-sizes=400,300_learning-start-1015d28d)?__[1-3]$' --group-by batch_size
plot --name exp_offpolicy_six_seeds --match '^HalfCheetah-v4__(td3|ddpg)__[1-6]$' --max-step 100000
plot --name exp_paper_settings_six_seeds --match '^HalfCheetah-v4__td3(__batch-size=100_hidden-sizes=400,300_learning-start-1015d28d)?__[1-6]$' --max-step 100000 --group-by batch_size
plot --name exp_paper_settings_nine_seeds --match '^HalfCheetah-v4__td3__batch-size=100_hidden-sizes=400,300_learning-start-1015d28d__[1-9]$' --max-step 100000
plot --name exp_tianshou_steps --match '^HalfCheetah-v4__(td3|ddpg)__[1-6]$' --max-step 130000 --reference
plot --name exp_two_halves --match '^HalfCheetah-v4__(sac|td3|ddpg)(__update-threads=2)?__[1-3]$' --max-step 100000 --group-by update_threads
plot --name exp_td3_split_batch --match '^HalfCheetah-v4__td3__split-batch__[1-3]$' --max-step 100000
plot --name exp_ppo_num_envs_sps --match '^Hopper-v4__ppo(__num-envs=[0-9]+_num-steps=[0-9]+)?__[12]$' --group-by num_envs num_steps --metric charts/SPS
ls docs
