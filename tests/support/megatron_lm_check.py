"""Run under ``python -m megatron_power.launch`` with a Megatron-LM tree on PYTHONPATH:
parse and validate Megatron-LM's arguments, build its scheduler, step it, print JSON."""

import json
import sys
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402
from megatron.training import arguments, global_vars  # noqa: E402
from megatron.training import training as megatron_training  # noqa: E402

if hasattr(arguments, "parse_and_validate_args"):  # 0.18+
    args = arguments.parse_and_validate_args()
else:
    args = arguments.parse_args()
    arguments.validate_args(args)
    global_vars.set_args(args)
optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=args.lr)
scheduler = megatron_training.get_optimizer_param_scheduler(optimizer)
mup = {}
if getattr(args, "power_mup", False):
    config = arguments.core_transformer_config_from_args(args)
    sample = torch.empty(512, 512)
    config.init_method(sample)
    mup = {"softmax_scale": config.softmax_scale, "init_std": sample.std().item()}
lrs = []
for _ in range(args.train_iters):
    scheduler.step(args.global_batch_size)
    lrs.append(optimizer.param_groups[0]["lr"])
print(
    "RESULT "
    + json.dumps(
        {
            "scheduler": type(scheduler).__name__,
            "style": args.lr_decay_style,
            "lr_power_a": args.lr_power_a,
            "settings": scheduler.settings.to_dict(),
            "lrs": lrs,
            "mup": mup,
        }
    ),
    file=sys.stdout,
)
