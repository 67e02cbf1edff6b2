"""The digits MLP of mlp_digits.py, trained data-parallel on several processes with MPI.

    mpirun -n 2 python examples/mlp_digits_distributed.py          # 2 ranks on this machine
    python examples/mlp_digits_distributed.py                      # one process, no MPI

Every rank loads the same data and draws the same shuffled global batches (seed 0); rank r
trains on its contiguous share of each batch, the gradients are summed with one Allreduce
per step, and every rank applies the same Adam update, so all ranks end with bit-identical
parameters: the script prints every rank's parameter hash at the end.

Options: --epochs E, --steps N (stop after N steps), --checkpoint PATH --every K (rank 0
writes a checkpoint every K steps), --resume (start from PATH when it exists),
--save-params PATH (rank 0 writes the final values), --fail-at S (rank 1 raises at step S,
to see the whole job stop).
"""
import argparse
import os
import sys

import graphnn as gn
from graphnn import distributed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlp_digits import BATCH, LR, SEED, build  # noqa: E402 - the same model as mlp_digits.py


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--batch", type=int, default=BATCH, help="GLOBAL batch size")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--every", type=int, default=20, help="checkpoint every K steps")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--save-params", default=None)
    parser.add_argument("--fail-at", type=int, default=None)
    parser.add_argument("--backend", default="cpu")
    return parser.parse_args(argv)


def train(args, comm, rank, size):
    (X_train, y_train), (X_test, y_test) = gn.data.digits(seed=SEED)
    model, x, logits, loss, accuracy = build()
    trainer = distributed.DataParallel(loss, model.params, gn.optim.Adam(LR),
                                       metrics=[accuracy], comm=comm, backend=args.backend,
                                       checkpoint=args.checkpoint, checkpoint_every=args.every)
    if rank == 0:
        print(f"{size} rank(s), global batch {args.batch} ({args.batch // size} rows per rank), "
              f"{trainer.gradient_count} parameters, {trainer.buffer_bytes} bytes all-reduced "
              f"per step")
    if args.resume and args.checkpoint and os.path.exists(args.checkpoint):
        trainer.restore(args.checkpoint)
        if rank == 0:
            print(f"resumed from {args.checkpoint} after step {trainer.steps_done}")
    steps_per_epoch = -(-len(X_train) // args.batch)
    for step, epoch, rows in distributed.global_batches(len(X_train), args.batch,
                                                        args.epochs, SEED):
        if args.steps is not None and step >= args.steps:
            break
        if step < trainer.steps_done:
            continue  # done before the checkpoint we resumed from
        if args.fail_at is not None and step + 1 == args.fail_at and rank == 1:
            raise RuntimeError(f"injected failure on rank 1 at step {step + 1}")
        loss_value, accuracy_value = trainer(x=X_train[rows], y=y_train[rows])
        if rank == 0 and (step + 1) % steps_per_epoch == 0:
            print(f"epoch {epoch + 1}: last batch loss {loss_value:.4f}, "
                  f"accuracy {accuracy_value:.2%}")
    if rank == 0:
        scores = gn.evaluate(gn.compile([loss, accuracy], backend=args.backend),
                             {"x": X_test, "y": y_test}, names=["loss", "accuracy"])
        print(f"after {trainer.steps_done} steps: test loss {scores['loss']:.4f}, "
              f"test accuracy {scores['accuracy']:.2%}")
        if args.save_params:
            import numpy as np
            np.savez(args.save_params, **{p.name: p.value for p in model.params})
    hashes = trainer.gather_hashes()
    if rank == 0:
        for r, digest in enumerate(hashes):
            print(f"rank {r} parameter hash {digest[:16]}")
        same = len(set(hashes)) == 1
        print(f"all {size} ranks hold identical parameters" if same
              else "ranks DIFFER in their parameters")
        return 0 if same else 1
    return 0


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    comm, rank, size = distributed.world()
    with distributed.abort_on_error(comm):
        return train(args, comm, rank, size)


if __name__ == "__main__":
    sys.exit(main())
