package org.apache.beam.runners.jobsubmission;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertThrows;
import static org.junit.Assert.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.apache.beam.model.jobmanagement.v1.JobApi.JobMessage;
import org.apache.beam.model.jobmanagement.v1.JobApi.JobState;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.runners.jobsubmission.FakeRunners.BlockingRunner;
import org.apache.beam.runners.jobsubmission.FakeRunners.FixedResult;
import org.junit.Test;

public class JobInvocationTest {
  private static final RunnerApi.Pipeline PIPELINE = RunnerApi.Pipeline.getDefaultInstance();

  private static JobInvocation invocation(PortablePipelineRunner runner) {
    return new JobInvocation(FakeRunners.jobInfo("job-1"), FakeRunners.executor(), PIPELINE, runner);
  }

  private static List<JobState.Enum> history(JobInvocation invocation) {
    List<JobState.Enum> states = new ArrayList<>();
    invocation.addStateListener(event -> states.add(event.getState()));
    return states;
  }

  @Test
  public void successfulRunGoesThroughEveryStateToDone() throws Exception {
    JobInvocation job = invocation((pipeline, info) -> new FixedResult(PipelineResult.State.DONE));
    assertEquals(JobState.Enum.STOPPED, job.getState());
    job.start();
    assertEquals(JobState.Enum.DONE, FakeRunners.awaitTerminal(job));
    assertEquals(
        List.of(JobState.Enum.STOPPED, JobState.Enum.STARTING, JobState.Enum.RUNNING, JobState.Enum.DONE),
        history(job));
    assertEquals(1, job.getMetrics().getCommittedCount());
    assertEquals("job-1", job.toProto().getJobId());
    assertEquals(JobState.Enum.DONE, job.toProto().getState());
  }

  @Test
  public void runnerExceptionFailsTheJobWithAnErrorMessage() throws Exception {
    JobInvocation job =
        invocation(
            (pipeline, info) -> {
              throw new IllegalStateException("boom", new RuntimeException("root cause"));
            });
    List<JobMessage> messages = new ArrayList<>();
    job.addMessageListener(messages::add);
    job.start();
    assertEquals(JobState.Enum.FAILED, FakeRunners.awaitTerminal(job));
    List<String> errors =
        messages.stream()
            .filter(m -> m.getImportance() == JobMessage.MessageImportance.JOB_MESSAGE_ERROR)
            .map(JobMessage::getMessageText)
            .collect(Collectors.toList());
    assertEquals(List.of("java.lang.RuntimeException: root cause"), errors);
    // A listener joining late gets the same messages replayed.
    List<JobMessage> late = new ArrayList<>();
    job.addMessageListener(late::add);
    assertEquals(messages, late);
  }

  @Test
  public void runnerReportingFailedStateFailsTheJob() throws Exception {
    JobInvocation job = invocation((pipeline, info) -> new FixedResult(PipelineResult.State.FAILED));
    job.start();
    assertEquals(JobState.Enum.FAILED, FakeRunners.awaitTerminal(job));
  }

  @Test
  public void cancelWhileRunningInterruptsAndEndsCancelled() throws Exception {
    BlockingRunner runner = new BlockingRunner();
    JobInvocation job = invocation(runner);
    job.start();
    assertTrue(runner.started.await(10, TimeUnit.SECONDS));
    assertEquals(JobState.Enum.RUNNING, job.getState());
    job.cancel();
    assertEquals(JobState.Enum.CANCELLED, FakeRunners.awaitTerminal(job));
    // Terminal states are final: a second cancel changes nothing.
    job.cancel();
    assertEquals(
        List.of(
            JobState.Enum.STOPPED,
            JobState.Enum.STARTING,
            JobState.Enum.RUNNING,
            JobState.Enum.CANCELLED),
        history(job));
  }

  @Test
  public void cancelOfAStillRunningResultCancelsThatResult() throws Exception {
    FixedResult detached = new FixedResult(PipelineResult.State.RUNNING);
    JobInvocation job = invocation((pipeline, info) -> detached);
    job.start();
    // The runner returned at once but the job goes on: the invocation stays RUNNING.
    for (int i = 0; i < 100 && !detachedReturned(job); i++) {
      Thread.sleep(20);
    }
    assertEquals(JobState.Enum.RUNNING, job.getState());
    job.cancel();
    assertTrue(detached.cancelled);
    assertEquals(JobState.Enum.CANCELLED, job.getState());
  }

  private static boolean detachedReturned(JobInvocation job) {
    return history(job).size() >= 4; // STOPPED, STARTING, RUNNING, RUNNING (from the result)
  }

  @Test
  public void cancelBeforeStartCancelsAndStartIsRefused() {
    JobInvocation job = invocation((pipeline, info) -> new FixedResult(PipelineResult.State.DONE));
    job.cancel();
    assertEquals(JobState.Enum.CANCELLED, job.getState());
    assertThrows(IllegalStateException.class, job::start);
  }

  @Test
  public void aThrowingListenerIsDroppedAndTheJobStillFinishes() throws Exception {
    JobInvocation job = invocation((pipeline, info) -> new FixedResult(PipelineResult.State.DONE));
    List<JobState.Enum> seen = new ArrayList<>();
    job.addStateListener(
        event -> {
          seen.add(event.getState());
          if (event.getState() == JobState.Enum.STARTING) {
            throw new IllegalStateException("client went away");
          }
        });
    job.start();
    assertEquals(JobState.Enum.DONE, FakeRunners.awaitTerminal(job));
    assertEquals(List.of(JobState.Enum.STOPPED, JobState.Enum.STARTING), seen);
    assertFalse(JobInvocation.isTerminated(JobState.Enum.RUNNING));
  }
}
