"""`ptune plan`: the peak device memory and the FLOPs of a run, predicted from config.json before any weight is
read, by tracing ptune's own training and generation code under `FakeTensorMode` (ptune.plan.trace), with the
constants a trace cannot see stated in ptune.plan.devices, put together per phase in ptune.plan.report.
"""
