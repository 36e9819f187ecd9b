"""One router per resource: health, matrices, jobs, and the results of a job."""
