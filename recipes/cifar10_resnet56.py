"""CIFAR-10 ResNet-56 with the paper's settings (Chatzikonstantinou et al. 2020).

The settings are those of the authors' code (github.com/chatzikon/DNN-COMPRESSION,
under cifar/; lines of step1/ and step4/ at commit 1cfdf7c, of step3/ at ab38a4a):
- Pruning: k3*k4 filter ranking (step1/cifar10/res56prune_normality.py line 31),
  Shapiro-Wilk ratios (P1, lines 125-127) with c = 3.7 (line 107). That script
  applies c to the strategy --strategy picks, P2 (Jarque-Bera) by default (line
  33), and places W in the fixed range 0.905-1.0 (line 127) where hos_keras
  uses the model's own T_min-T_max. Only the first conv of each residual block
  is pruned (`scope="inner"`; "prune only the first convolutional layer of each
  residual block", line 119), the residual streams keep their width.
- Distillation: 140 epochs (step3/main_finetune_dimen_mult_loss.py line 35) of
  batches of 64 (line 31), SGD at lr 1e-3 (line 39) with Nesterov momentum 0.9
  and no weight decay (step3/net_for_multiloss_ft.py lines 351-355), x0.1 at
  epochs 80 and 120 (MultiStepLR, main_finetune_dimen_mult_loss.py lines 656 and
  660; scaled with --distill-epochs, see recipe_common), with the output loss and
  two pivot losses (line 864; after blocks 9 and 18, net_for_multiloss_ft.py
  line 65).
- Fine-tuning: 30 epochs (step4/main_finetune.py line 35) of batches of 64 (line
  31), SGD at lr 1e-4 (line 39) with momentum 0.9 and no Nesterov (lines 41 and
  207).
The baseline training (160 epochs of SGD, Nesterov, cosine from 0.1, weight decay
5e-4) is hos_keras's: the reference starts from trained checkpoints. Pass
--macs-reduction 0.5 to ask for a MACs reduction instead of c, --baseline to
compress a trained model. CIFAR-10 comes from tensorflow-datasets (--data-dir).
"""

import recipe_common as common

from hos_keras import models


def arguments(argv=None):
    """The recipe's settings, overridden by the flags in `argv`."""
    return common.parser(
        __doc__.splitlines()[0],
        output_dir="runs/cifar10_resnet56",
        **common.PAPER_CIFAR,
        coefficient=3.7,
    ).parse_args(argv)


def main(argv=None):
    return common.cifar(
        arguments(argv), "cifar10", lambda: models.resnet56(num_classes=10)
    )


if __name__ == "__main__":
    main()
