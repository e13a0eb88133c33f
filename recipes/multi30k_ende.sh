#!/usr/bin/env bash
# The embedded English-German model, trained end to end with lanmt's own commands on Multi30k
# (29,000 training pairs; `val` selects checkpoints; `test_2016_flickr` is for reporting only).
#
#   recipes/multi30k_ende.sh [MULTI30K_DIR] [WORK_DIR]
#
# Every stage keeps checkpoints in WORK_DIR/run/<stage>/; rerunning the script resumes where it
# stopped (finished stages are skipped). Budgets are wall-clock limits sized for a 2-core CPU
# machine; on a GPU raise --epochs and drop --max-time. How the shipped model was actually
# trained (in several resumed parts, stages side by side): recipes/README.md.
set -euo pipefail
DATA=${1:-../shared/data/multi30k}
WORK=${2:-work/multi30k-ende}
THREADS=${THREADS:-2}
TEACHER_TIME=${TEACHER_TIME:-155m}
DISTILL_BEAM=${DISTILL_BEAM:-4}
LANMT_STEPS=${LANMT_STEPS:-6000}
LANMT_TIME=${LANMT_TIME:-}
KL_FLOOR=${KL_FLOOR:-0.5}
LATENCY_SENTENCES=${LATENCY_SENTENCES:-150}
mkdir -p "$WORK"

# 1. SentencePiece (joint 8k unigram) and binarized data
[ -d "$WORK/data" ] || lanmt prepare \
  --train-src "$DATA/train.en.gz" --train-tgt "$DATA/train.de.gz" \
  --valid-src "$DATA/val.en.gz" --valid-tgt "$DATA/val.de.gz" \
  --test "test2016=$DATA/test_2016_flickr.en.gz,$DATA/test_2016_flickr.de.gz" \
  --vocab-size 8000 --joint --src-lang en --tgt-lang de --max-len 80 --out "$WORK/data"

resume() { [ -d "$WORK/run/$1/last" ] && echo --resume || true; }
finished() { [ -f "$WORK/run/$1/result.json" ]; }

# 2. the autoregressive teacher (Transformer, 256 wide, 3+3 layers)
finished teacher || lanmt train --stage teacher --data "$WORK/data" --out "$WORK/run" \
  --threads "$THREADS" --hidden 256 --layers 3 --heads 4 --ffn 1024 --dropout 0.2 \
  --max-tokens 4096 --lr 1e-3 --warmup 400 --epochs 40 --max-time "$TEACHER_TIME" \
  --valid-per-epoch 1 --bleu-sents 300 --valid-beam 1 $(resume teacher)

# 3. distillation: the teacher beam-translates the training sources
finished distill || lanmt train --stage distill --data "$WORK/data" --out "$WORK/run" \
  --threads "$THREADS" --beam "$DISTILL_BEAM"

# 4. LaNMT on the final teacher's beam-4 distillation from the first update. The objective
#    keeps z alive (recipes/README.md has the runs that chose it): KL budget 1 nat per source
#    token for the first half, annealed to KL_FLOOR (not 0) over the second; embeddings,
#    encoder and output layer start from the teacher, the decoder does not (a decoder copied
#    from the teacher translates without z and never learns to read it); `best/` is the
#    checkpoint with the best validation refine1 BLEU. No finetune at budget 0: it switches
#    the latent off.
finished lanmt || lanmt train --stage lanmt --data "$WORK/data" --out "$WORK/run" \
  --threads "$THREADS" --hidden 256 --layers 3 --heads 4 --ffn 1024 --latent-dim 8 \
  --dropout 0.1 --max-tokens 4096 --lr 1e-3 --warmup 200 --teacher-init encoder \
  --kl-budget 1 --kl-floor "$KL_FLOOR" --max-steps "$LANMT_STEPS" \
  ${LANMT_TIME:+--max-time "$LANMT_TIME"} --valid-every 200 --bleu-sents 300 --select refine1 \
  $(resume lanmt)

# 6. the embedded default model: LaNMT plus its teacher, stored in half precision
python "$(dirname "$0")/ship_default.py" "$WORK/run/lanmt/best" --teacher "$WORK/run/teacher/best"

# 7. the README's results table, measured on the shipped model and test_2016_flickr
lanmt bench --src "$DATA/test_2016_flickr.en.gz" --ref "$DATA/test_2016_flickr.de.gz" --evaluate \
  -d beam -d beam1 -d beam:compute_type=int8 -d beam1:compute_type=int8 \
  -d one-shot -d refine1 -d refine3 -d one-shot:quantize=none -d refine1:quantize=none \
  -d one-shot:quantize=int8 -d refine1:quantize=int8 -d teacher-rescore -d teacher-rescore8 \
  --latency-sentences "$LATENCY_SENTENCES" --threads "$THREADS" --json "$WORK/bench.json" --markdown \
  | tee "$WORK/bench.md"
