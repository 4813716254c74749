package org.apache.beam.runners.jobsubmission;

import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import org.apache.beam.model.jobmanagement.v1.JobApi;
import org.apache.beam.model.jobmanagement.v1.JobApi.JobState;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.runners.fnexecution.provisioning.JobInfo;
import org.apache.beam.sdk.metrics.MetricResults;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.Struct;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.util.concurrent.ListeningExecutorService;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.util.concurrent.MoreExecutors;
import org.joda.time.Duration;

/** Fake runners, results and invokers shared by the tests. */
final class FakeRunners {
  private FakeRunners() {}

  static ListeningExecutorService executor() {
    return MoreExecutors.listeningDecorator(Executors.newCachedThreadPool());
  }

  static JobInfo jobInfo(String id) {
    return JobInfo.create(id, "test-job", "", Struct.getDefaultInstance());
  }

  /** Waits until the invocation reaches a terminal state; returns it. */
  static JobState.Enum awaitTerminal(JobInvocation invocation) throws InterruptedException {
    CountDownLatch done = new CountDownLatch(1);
    invocation.addStateListener(
        event -> {
          if (JobInvocation.isTerminated(event.getState())) {
            done.countDown();
          }
        });
    if (!done.await(10, TimeUnit.SECONDS)) {
      throw new AssertionError("Job still " + invocation.getState() + " after 10 s");
    }
    return invocation.getState();
  }

  /** A result in a fixed state, with a counter metric named "count". */
  static final class FixedResult implements PortablePipelineResult {
    private final State state;
    boolean cancelled;

    FixedResult(State state) {
      this.state = state;
    }

    @Override
    public State getState() {
      return cancelled ? State.CANCELLED : state;
    }

    @Override
    public State cancel() {
      cancelled = true;
      return State.CANCELLED;
    }

    @Override
    public State waitUntilFinish(Duration duration) {
      return state;
    }

    @Override
    public State waitUntilFinish() {
      return state;
    }

    @Override
    public MetricResults metrics() {
      throw new UnsupportedOperationException();
    }

    @Override
    public JobApi.MetricResults portableMetrics() {
      return JobApi.MetricResults.newBuilder()
          .addCommitted(
              org.apache.beam.model.pipeline.v1.MetricsApi.MonitoringInfo.newBuilder()
                  .setUrn("beam:metric:user:sum_int64:v1")
                  .putLabels("NAME", "count"))
          .build();
    }
  }

  /** A runner that blocks until interrupted (to test cancel). */
  static final class BlockingRunner implements PortablePipelineRunner {
    final CountDownLatch started = new CountDownLatch(1);

    @Override
    public PortablePipelineResult run(RunnerApi.Pipeline pipeline, JobInfo jobInfo)
        throws Exception {
      started.countDown();
      Thread.sleep(Long.MAX_VALUE);
      throw new AssertionError("unreachable");
    }
  }

  /** An invoker whose jobs all use {@code runner}. */
  static final class FakeInvoker extends JobInvoker {
    private final PortablePipelineRunner runner;
    private int count;

    FakeInvoker(PortablePipelineRunner runner) {
      super("fake-invoker-%d");
      this.runner = runner;
    }

    @Override
    protected synchronized JobInvocation invokeWithExecutor(
        RunnerApi.Pipeline pipeline,
        Struct options,
        String retrievalToken,
        ListeningExecutorService executor) {
      JobInfo info = JobInfo.create("job-" + (++count), "test-job", retrievalToken, options);
      return new JobInvocation(info, executor, pipeline, runner);
    }
  }
}
