# fewclip: few-shot CLIP adaptation, reproduced.
# data root ─► split manifests ─► feature store ─► fit ─► predictions + metrics ─► collect ─► reports
from snakemake.utils import min_version

min_version("9.0")


# The embedded demo's config, unless the run names its own: with --configfile, exactly those
# files (+ --config) are used and nothing of the demo (`fewclip plan` reads configs the same way).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"



report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/features.smk"
if config.get("batch_cells", False):

    include: "workflow/rules/fit_batch.smk"

else:

    include: "workflow/rules/fit.smk"

include: "workflow/rules/report.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
