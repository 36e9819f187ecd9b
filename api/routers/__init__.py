"""One router per resource: health, matrices, jobs, and the results of a job."""

API_PREFIX = "/api/v1"  # where the routers are mounted
