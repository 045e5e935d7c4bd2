"""The tools around the pipeline: throughput benchmark, GPU check, cost plan, cluster, spread study, params composition."""
