package org.apache.beam.runners.jobsubmission;

import org.apache.beam.model.jobmanagement.v1.JobApi;
import org.apache.beam.sdk.PipelineResult;

/** A {@link PipelineResult} that can also report its metrics in Job API form. */
public interface PortablePipelineResult extends PipelineResult {
  /** Metrics for the GetJobMetrics call; may throw if the runner cannot provide them. */
  JobApi.MetricResults portableMetrics() throws UnsupportedOperationException;
}
