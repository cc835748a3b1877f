"""CIFAR-100 ResNet-56 with the paper's settings (Chatzikonstantinou et al. 2020).

The settings are those of the authors' code (github.com/chatzikon/DNN-COMPRESSION,
under cifar/; lines of step1/ and step4/ at commit 1cfdf7c, of step3/ at ab38a4a):
- Pruning: k3*k4 filter ranking (step1/cifar100/res56prune_normality.py line 34),
  Shapiro-Wilk ratios (lines 127-128) with c = 8.7 (line 112). The reference
  places W in the fixed range 0.75-0.95 (line 128), hos_keras in the model's own
  T_min-T_max: with c = 8.7 both give every layer 0, 0.1 or 0.2, but which layers
  get 0.2 can differ.
- Distillation: 140 epochs (step3/main_finetune_dimen_mult_loss.py line 35) of
  batches of 64 (line 31), SGD at lr 1e-3 (line 39) with Nesterov momentum 0.9
  and no weight decay (step3/net_for_multiloss_ft.py lines 351-355), x0.1 at
  epochs 80 and 120 (MultiStepLR, main_finetune_dimen_mult_loss.py lines 656 and
  660; scaled with --distill-epochs, see recipe_common), with the output loss and
  two pivot losses (line 864; after blocks 9 and 18, net_for_multiloss_ft.py
  line 65).
- Fine-tuning: 30 epochs (step4/main_finetune.py line 35) of batches of 64 (line
  31), SGD with momentum 0.9 and no Nesterov (lines 41 and 207) at lr 1e-5: the
  default 1e-4 (line 39), divided by 10 for CIFAR-100 (lines 202-203).
The baseline training (160 epochs of SGD, Nesterov, cosine from 0.1, weight decay
5e-4) is hos_keras's: the reference starts from trained checkpoints. Pass
--macs-reduction 0.5 to ask for a MACs reduction instead of c, --baseline to
compress a trained model. CIFAR-100 comes from tensorflow-datasets (--data-dir).
"""

import recipe_common as common

from hos_keras import models


def arguments(argv=None):
    """The recipe's settings, overridden by the flags in `argv`."""
    return common.parser(
        __doc__.splitlines()[0],
        output_dir="runs/cifar100_resnet56",
        **{**common.PAPER_CIFAR, "finetune_lr": 1e-5},
        coefficient=8.7,
    ).parse_args(argv)


def main(argv=None):
    return common.cifar(
        arguments(argv), "cifar100", lambda: models.resnet56(num_classes=100)
    )


if __name__ == "__main__":
    main()
