package org.apache.beam.runners.jobsubmission;

import java.util.Objects;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.Struct;

/** A prepared, not yet running job: what Prepare received, kept until Run. */
public final class JobPreparation {
  private final String id;
  private final RunnerApi.Pipeline pipeline;
  private final Struct options;

  public JobPreparation(String id, RunnerApi.Pipeline pipeline, Struct options) {
    this.id = Objects.requireNonNull(id, "id");
    this.pipeline = Objects.requireNonNull(pipeline, "pipeline");
    this.options = Objects.requireNonNull(options, "options");
  }

  public String id() {
    return id;
  }

  public RunnerApi.Pipeline pipeline() {
    return pipeline;
  }

  public Struct options() {
    return options;
  }
}
