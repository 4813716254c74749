package org.apache.beam.runners.jobsubmission;

import java.io.IOException;
import java.util.concurrent.Executors;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.Struct;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.util.concurrent.ListeningExecutorService;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.util.concurrent.MoreExecutors;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.util.concurrent.ThreadFactoryBuilder;
import org.checkerframework.checker.nullness.qual.Nullable;

/** Turns a prepared pipeline into a {@link JobInvocation}; one shared executor runs the jobs. */
public abstract class JobInvoker {
  private final ListeningExecutorService executor;

  /** @param threadNameFormat a {@link String#format} pattern with one %d, e.g. "invoker-%d" */
  protected JobInvoker(String threadNameFormat) {
    // Daemon threads: a job still running must not keep the JVM alive after the server stops.
    this.executor =
        MoreExecutors.listeningDecorator(
            Executors.newCachedThreadPool(
                new ThreadFactoryBuilder()
                    .setNameFormat(threadNameFormat)
                    .setDaemon(true)
                    .build()));
  }

  /** Creates (does not start) the invocation that will run on {@code executor}. */
  protected abstract JobInvocation invokeWithExecutor(
      RunnerApi.Pipeline pipeline,
      Struct options,
      @Nullable String retrievalToken,
      ListeningExecutorService executor)
      throws IOException;

  public JobInvocation invoke(
      RunnerApi.Pipeline pipeline, Struct options, @Nullable String retrievalToken)
      throws IOException {
    return invokeWithExecutor(pipeline, options, retrievalToken, executor);
  }
}
