package org.apache.beam.runners.jobsubmission;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CancellationException;
import java.util.function.Consumer;
import org.apache.beam.model.jobmanagement.v1.JobApi;
import org.apache.beam.model.jobmanagement.v1.JobApi.JobMessage;
import org.apache.beam.model.jobmanagement.v1.JobApi.JobState;
import org.apache.beam.model.jobmanagement.v1.JobApi.JobStateEvent;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.runners.fnexecution.provisioning.JobInfo;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.util.Timestamps;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.base.Throwables;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.util.concurrent.FutureCallback;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.util.concurrent.Futures;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.util.concurrent.ListenableFuture;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.util.concurrent.ListeningExecutorService;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.util.concurrent.MoreExecutors;
import org.checkerframework.checker.nullness.qual.Nullable;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * One job run by the job service: runs the pipeline on an executor and records its state history
 * (STOPPED, STARTING, RUNNING, then DONE / FAILED / CANCELLED) and its messages, replaying both to
 * every listener that joins later.
 *
 * <p>All mutable state is guarded by {@code this}. Once a terminal state is reached, later
 * transitions are ignored, so a late pipeline result cannot overwrite CANCELLED.
 */
public class JobInvocation {
  private static final Logger LOG = LoggerFactory.getLogger(JobInvocation.class);

  private final JobInfo jobInfo;
  private final ListeningExecutorService executor;
  private final RunnerApi.Pipeline pipeline;
  private final PortablePipelineRunner runner;

  private final List<JobStateEvent> states = new ArrayList<>();
  private final List<JobMessage> messages = new ArrayList<>();
  private final List<Consumer<JobStateEvent>> stateListeners = new ArrayList<>();
  private final List<Consumer<JobMessage>> messageListeners = new ArrayList<>();

  private @Nullable ListenableFuture<PortablePipelineResult> future;
  /** A result returned while the job still runs (e.g. a detached submission). */
  private @Nullable PortablePipelineResult liveResult;

  private JobApi.MetricResults metrics = JobApi.MetricResults.getDefaultInstance();

  public JobInvocation(
      JobInfo jobInfo,
      ListeningExecutorService executor,
      RunnerApi.Pipeline pipeline,
      PortablePipelineRunner runner) {
    this.jobInfo = jobInfo;
    this.executor = executor;
    this.pipeline = pipeline;
    this.runner = runner;
    setState(JobState.Enum.STOPPED);
  }

  /** Submits the pipeline to the executor; may be called once. */
  public synchronized void start() {
    if (getState() != JobState.Enum.STOPPED) {
      throw new IllegalStateException("Job " + getId() + " was already started.");
    }
    LOG.info("Starting job invocation {}", getId());
    setState(JobState.Enum.STARTING);
    ListenableFuture<PortablePipelineResult> submitted =
        executor.submit(() -> runner.run(pipeline, jobInfo));
    future = submitted;
    setState(JobState.Enum.RUNNING);
    Futures.addCallback(
        submitted,
        new FutureCallback<PortablePipelineResult>() {
          @Override
          public void onSuccess(@Nullable PortablePipelineResult result) {
            onRunnerReturned(result);
          }

          @Override
          public void onFailure(Throwable error) {
            onRunnerFailed(error);
          }
        },
        MoreExecutors.directExecutor());
  }

  /** Cancels the job: before start, while running, or through a still-running result. */
  public synchronized void cancel() {
    if (isTerminated(getState())) {
      return;
    }
    LOG.info("Cancelling job invocation {}", getId());
    if (future == null) {
      setState(JobState.Enum.CANCELLED);
    } else if (!future.isDone()) {
      // Interrupts the runner thread; the callback then records CANCELLED.
      future.cancel(true);
    } else if (liveResult != null) {
      try {
        liveResult.cancel();
      } catch (Exception e) {
        throw new IllegalStateException("Could not cancel job " + getId(), e);
      }
      setState(JobState.Enum.CANCELLED);
    }
  }

  private synchronized void onRunnerReturned(@Nullable PortablePipelineResult result) {
    if (result == null) {
      setState(JobState.Enum.UNSPECIFIED);
      return;
    }
    PipelineResult.State state = result.getState();
    if (state.isTerminal()) {
      metrics = metricsOf(result);
    } else {
      liveResult = result;
    }
    setState(toJobState(state));
  }

  private synchronized void onRunnerFailed(Throwable error) {
    if (error instanceof CancellationException) {
      setState(JobState.Enum.CANCELLED);
      return;
    }
    LOG.error("Job invocation {} failed.", getId(), error);
    // The SDK shows the last ERROR message as the reason of the failure.
    sendMessage(
        jobMessage(
            Throwables.getStackTraceAsString(error), JobMessage.MessageImportance.JOB_MESSAGE_DEBUG));
    sendMessage(
        jobMessage(
            Throwables.getRootCause(error).toString(),
            JobMessage.MessageImportance.JOB_MESSAGE_ERROR));
    setState(JobState.Enum.FAILED);
  }

  private static JobMessage jobMessage(String text, JobMessage.MessageImportance importance) {
    return JobMessage.newBuilder()
        .setMessageId(Long.toString(System.nanoTime()))
        .setTime(Long.toString(System.currentTimeMillis()))
        .setImportance(importance)
        .setMessageText(text)
        .build();
  }

  private JobApi.MetricResults metricsOf(PortablePipelineResult result) {
    try {
      return result.portableMetrics();
    } catch (RuntimeException e) {
      LOG.debug("No metrics for job {}: {}", getId(), e.toString());
      return metrics;
    }
  }

  /** The Job API's name for a runner's state: the same names, UNKNOWN aside. */
  static JobState.Enum toJobState(PipelineResult.State state) {
    try {
      return JobState.Enum.valueOf(state.name());
    } catch (IllegalArgumentException unknown) {
      return JobState.Enum.UNSPECIFIED;
    }
  }

  public String getId() {
    return jobInfo.jobId();
  }

  public RunnerApi.Pipeline getPipeline() {
    return pipeline;
  }

  public synchronized JobState.Enum getState() {
    return getStateEvent().getState();
  }

  public synchronized JobStateEvent getStateEvent() {
    return states.get(states.size() - 1);
  }

  /** Metrics of the finished job, or the current ones of a still-running result. */
  public synchronized JobApi.MetricResults getMetrics() {
    if (liveResult != null) {
      metrics = metricsOf(liveResult);
    }
    return metrics;
  }

  /** Replays the state history to {@code listener}, then sends it every new state. */
  public synchronized void addStateListener(Consumer<JobStateEvent> listener) {
    replayThenAdd(states, listener, stateListeners);
  }

  /** Replays the messages sent so far to {@code listener}, then sends it every new one. */
  public synchronized void addMessageListener(Consumer<JobMessage> listener) {
    replayThenAdd(messages, listener, messageListeners);
  }

  public synchronized JobApi.JobInfo toProto() {
    return JobApi.JobInfo.newBuilder()
        .setJobId(jobInfo.jobId())
        .setJobName(jobInfo.jobName())
        .setPipelineOptions(jobInfo.pipelineOptions())
        .setState(getState())
        .build();
  }

  public static boolean isTerminated(JobState.Enum state) {
    switch (state) {
      case DONE:
      case FAILED:
      case CANCELLED:
      case DRAINED:
        return true;
      default:
        return false;
    }
  }

  private synchronized void setState(JobState.Enum state) {
    if (!states.isEmpty() && isTerminated(getState())) {
      LOG.debug("Job {} is already {}; ignoring {}", getId(), getState(), state);
      return;
    }
    JobStateEvent event =
        JobStateEvent.newBuilder()
            .setState(state)
            .setTimestamp(Timestamps.fromMillis(System.currentTimeMillis()))
            .build();
    states.add(event);
    broadcast(stateListeners, event);
  }

  private synchronized void sendMessage(JobMessage message) {
    messages.add(message);
    broadcast(messageListeners, message);
  }

  private <T> void replayThenAdd(
      List<T> history, Consumer<T> listener, List<Consumer<T>> listeners) {
    for (T item : history) {
      if (!deliver(listener, item)) {
        return;
      }
    }
    listeners.add(listener);
  }

  /** A listener that throws (e.g. a client that went away) is dropped; the job goes on. */
  private <T> void broadcast(List<Consumer<T>> listeners, T item) {
    listeners.removeIf(listener -> !deliver(listener, item));
  }

  private <T> boolean deliver(Consumer<T> listener, T item) {
    try {
      listener.accept(item);
      return true;
    } catch (RuntimeException e) {
      LOG.warn("Dropping a listener of job {}: {}", getId(), e.toString());
      return false;
    }
  }
}
