package org.apache.beam.runners.jobsubmission;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.apache.beam.model.jobmanagement.v1.JobApi;
import org.apache.beam.model.jobmanagement.v1.JobApi.JobState;
import org.apache.beam.model.pipeline.v1.Endpoints;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.runners.fnexecution.artifact.ArtifactStagingService;
import org.apache.beam.runners.jobsubmission.FakeRunners.FakeInvoker;
import org.apache.beam.runners.jobsubmission.FakeRunners.FixedResult;
import org.apache.beam.sdk.PipelineResult;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.Struct;
import org.apache.beam.vendor.grpc.v1p69p0.com.google.protobuf.Value;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.Status;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.stub.StreamObserver;
import org.junit.Before;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

public class InMemoryJobServiceTest {
  private static final Endpoints.ApiServiceDescriptor STAGING =
      Endpoints.ApiServiceDescriptor.newBuilder().setUrl("localhost:12345").build();
  private static final Struct OPTIONS =
      Struct.newBuilder()
          .putFields("beam:option:job_name:v1", Value.newBuilder().setStringValue("t").build())
          .build();

  @Rule public TemporaryFolder tmp = new TemporaryFolder();

  private ArtifactStagingService staging;

  @Before
  public void setUp() {
    staging =
        new ArtifactStagingService(
            ArtifactStagingService.beamFilesystemArtifactDestinationProvider(
                tmp.getRoot().getPath()));
  }

  private InMemoryJobService service(PortablePipelineRunner runner, int history) {
    return InMemoryJobService.create(staging, STAGING, new FakeInvoker(runner), history, true);
  }

  /** Collects what a unary or streaming call answers. */
  static final class Recorder<T> implements StreamObserver<T> {
    final List<T> values = new ArrayList<>();
    Throwable error;
    final CountDownLatch finished = new CountDownLatch(1);

    @Override
    public synchronized void onNext(T value) {
      values.add(value);
    }

    @Override
    public void onError(Throwable t) {
      error = t;
      finished.countDown();
    }

    @Override
    public void onCompleted() {
      finished.countDown();
    }

    T single() throws InterruptedException {
      assertTrue(finished.await(10, TimeUnit.SECONDS));
      assertNull("unexpected error " + error, error);
      assertEquals(1, values.size());
      return values.get(0);
    }

    Status.Code errorCode() throws InterruptedException {
      assertTrue(finished.await(10, TimeUnit.SECONDS));
      assertNotNull(error);
      return Status.fromThrowable(error).getCode();
    }
  }

  private static JobApi.PrepareJobResponse prepare(InMemoryJobService service)
      throws InterruptedException {
    Recorder<JobApi.PrepareJobResponse> prepared = new Recorder<>();
    service.prepare(
        JobApi.PrepareJobRequest.newBuilder()
            .setJobName("test")
            .setPipeline(RunnerApi.Pipeline.getDefaultInstance())
            .setPipelineOptions(OPTIONS)
            .build(),
        prepared);
    return prepared.single();
  }

  private static String run(InMemoryJobService service, String preparationId)
      throws InterruptedException {
    Recorder<JobApi.RunJobResponse> ran = new Recorder<>();
    service.run(JobApi.RunJobRequest.newBuilder().setPreparationId(preparationId).build(), ran);
    return ran.single().getJobId();
  }

  private static List<JobApi.JobStateEvent> stateStream(InMemoryJobService service, String jobId)
      throws InterruptedException {
    Recorder<JobApi.JobStateEvent> states = new Recorder<>();
    service.getStateStream(JobApi.GetJobStateRequest.newBuilder().setJobId(jobId).build(), states);
    assertTrue("state stream did not complete", states.finished.await(10, TimeUnit.SECONDS));
    assertNull(states.error);
    return states.values;
  }

  private static JobState.Enum state(InMemoryJobService service, String jobId)
      throws InterruptedException {
    Recorder<JobApi.JobStateEvent> state = new Recorder<>();
    service.getState(JobApi.GetJobStateRequest.newBuilder().setJobId(jobId).build(), state);
    return state.single().getState();
  }

  @Test
  public void prepareRunAndFollowAJobToDone() throws Exception {
    InMemoryJobService service =
        service((pipeline, info) -> new FixedResult(PipelineResult.State.DONE), 10);
    JobApi.PrepareJobResponse prepared = prepare(service);
    assertTrue(prepared.getPreparationId().startsWith("test_"));
    assertEquals(STAGING, prepared.getArtifactStagingEndpoint());
    assertEquals(prepared.getPreparationId(), prepared.getStagingSessionToken());

    String jobId = run(service, prepared.getPreparationId());
    List<JobApi.JobStateEvent> states = stateStream(service, jobId);
    assertEquals(JobState.Enum.DONE, states.get(states.size() - 1).getState());
    assertEquals(JobState.Enum.DONE, state(service, jobId));

    Recorder<JobApi.GetJobsResponse> jobs = new Recorder<>();
    service.getJobs(JobApi.GetJobsRequest.getDefaultInstance(), jobs);
    assertEquals(jobId, jobs.single().getJobInfo(0).getJobId());

    Recorder<JobApi.GetJobMetricsResponse> metrics = new Recorder<>();
    service.getJobMetrics(JobApi.GetJobMetricsRequest.newBuilder().setJobId(jobId).build(), metrics);
    assertEquals(1, metrics.single().getMetrics().getCommittedCount());

    Recorder<JobApi.GetJobPipelineResponse> pipeline = new Recorder<>();
    service.getPipeline(JobApi.GetJobPipelineRequest.newBuilder().setJobId(jobId).build(), pipeline);
    assertNotNull(pipeline.single().getPipeline());
  }

  @Test
  public void messageStreamEndsWithTheTerminalStateAfterTheErrorMessage() throws Exception {
    InMemoryJobService service =
        service(
            (pipeline, info) -> {
              throw new RuntimeException("bad job");
            },
            10);
    String jobId = run(service, prepare(service).getPreparationId());
    stateStream(service, jobId); // waits for the end
    Recorder<JobApi.JobMessagesResponse> messages = new Recorder<>();
    service.getMessageStream(
        JobApi.JobMessagesRequest.newBuilder().setJobId(jobId).build(), messages);
    assertTrue(messages.finished.await(10, TimeUnit.SECONDS));
    List<JobApi.JobMessagesResponse> all = messages.values;
    JobApi.JobMessagesResponse last = all.get(all.size() - 1);
    assertEquals(JobState.Enum.FAILED, last.getStateResponse().getState());
    assertTrue(
        all.stream()
            .anyMatch(
                m ->
                    m.hasMessageResponse()
                        && m.getMessageResponse().getMessageText().contains("bad job")));
  }

  @Test
  public void unknownIdsAreNotFound() throws Exception {
    InMemoryJobService service =
        service((pipeline, info) -> new FixedResult(PipelineResult.State.DONE), 10);
    JobApi.PrepareJobResponse prepared = prepare(service);

    // The Python SDK asks for the state stream of the preparation id first.
    Recorder<JobApi.JobStateEvent> stream = new Recorder<>();
    service.getStateStream(
        JobApi.GetJobStateRequest.newBuilder().setJobId(prepared.getPreparationId()).build(),
        stream);
    assertEquals(Status.Code.NOT_FOUND, stream.errorCode());

    Recorder<JobApi.RunJobResponse> ran = new Recorder<>();
    service.run(JobApi.RunJobRequest.newBuilder().setPreparationId("nope").build(), ran);
    assertEquals(Status.Code.NOT_FOUND, ran.errorCode());

    // A preparation runs once.
    run(service, prepared.getPreparationId());
    Recorder<JobApi.RunJobResponse> again = new Recorder<>();
    service.run(
        JobApi.RunJobRequest.newBuilder().setPreparationId(prepared.getPreparationId()).build(),
        again);
    assertEquals(Status.Code.NOT_FOUND, again.errorCode());
  }

  @Test
  public void onlyHistorySizeFinishedJobsAreKept() throws Exception {
    InMemoryJobService service =
        service((pipeline, info) -> new FixedResult(PipelineResult.State.DONE), 1);
    String first = run(service, prepare(service).getPreparationId());
    stateStream(service, first);
    String second = run(service, prepare(service).getPreparationId());
    stateStream(service, second);

    assertEquals(JobState.Enum.DONE, state(service, second));
    Recorder<JobApi.JobStateEvent> gone = new Recorder<>();
    service.getState(JobApi.GetJobStateRequest.newBuilder().setJobId(first).build(), gone);
    assertEquals(Status.Code.NOT_FOUND, gone.errorCode());
  }

  @Test
  public void cancelAnswersTheNewState() throws Exception {
    FakeRunners.BlockingRunner runner = new FakeRunners.BlockingRunner();
    InMemoryJobService service = service(runner, 10);
    String jobId = run(service, prepare(service).getPreparationId());
    assertTrue(runner.started.await(10, TimeUnit.SECONDS));
    Recorder<JobApi.CancelJobResponse> cancelled = new Recorder<>();
    service.cancel(JobApi.CancelJobRequest.newBuilder().setJobId(jobId).build(), cancelled);
    assertEquals(JobState.Enum.CANCELLED, cancelled.single().getState());
  }

  @Test
  public void describesPipelineOptions() throws Exception {
    InMemoryJobService service =
        service((pipeline, info) -> new FixedResult(PipelineResult.State.DONE), 10);
    Recorder<JobApi.DescribePipelineOptionsResponse> described = new Recorder<>();
    service.describePipelineOptions(
        JobApi.DescribePipelineOptionsRequest.getDefaultInstance(), described);
    assertFalse(described.single().getOptionsList().isEmpty());
  }

  @Test
  public void declaredButUnstagedArtifactsAreAnError() {
    RunnerApi.Pipeline pipeline =
        RunnerApi.Pipeline.newBuilder()
            .setComponents(
                RunnerApi.Components.newBuilder()
                    .putEnvironments(
                        "env",
                        RunnerApi.Environment.newBuilder()
                            .addDependencies(
                                RunnerApi.ArtifactInformation.newBuilder().setTypeUrn("x"))
                            .build()))
            .build();
    try {
      InMemoryJobService.withStagedArtifacts(pipeline, null);
      throw new AssertionError("expected an error");
    } catch (RuntimeException e) {
      assertEquals(Status.Code.FAILED_PRECONDITION, Status.fromThrowable(e).getCode());
    }
  }
}
