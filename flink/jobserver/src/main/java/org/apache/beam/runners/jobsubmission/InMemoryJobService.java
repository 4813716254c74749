package org.apache.beam.runners.jobsubmission;

import java.util.ArrayDeque;
import java.util.Deque;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Consumer;
import org.apache.beam.model.jobmanagement.v1.JobApi;
import org.apache.beam.model.jobmanagement.v1.JobApi.JobMessagesResponse;
import org.apache.beam.model.jobmanagement.v1.JobApi.JobStateEvent;
import org.apache.beam.model.jobmanagement.v1.JobServiceGrpc;
import org.apache.beam.model.pipeline.v1.Endpoints;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.runners.fnexecution.artifact.ArtifactStagingService;
import org.apache.beam.sdk.fn.server.FnService;
import org.apache.beam.sdk.fn.stream.SynchronizedStreamObserver;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.util.construction.graph.PipelineValidator;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.Status;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.StatusException;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.StatusRuntimeException;
import org.apache.beam.vendor.grpc.v1p69p0.io.grpc.stub.StreamObserver;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.collect.Maps;
import org.checkerframework.checker.nullness.qual.Nullable;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The Beam Job API service, with jobs kept in memory.
 *
 * <p>Flow the SDKs follow: Prepare (pipeline + options; answers a preparation id, the artifact
 * staging endpoint and a staging token), the client stages artifacts, Run (resolves the staged
 * artifacts into the pipeline's environments and starts a {@link JobInvocation}), then
 * GetStateStream / GetMessageStream until a terminal state. The staging token is the preparation
 * id. At most {@code historySize} finished jobs are remembered.
 */
public class InMemoryJobService extends JobServiceGrpc.JobServiceImplBase implements FnService {
  private static final Logger LOG = LoggerFactory.getLogger(InMemoryJobService.class);

  public static final int DEFAULT_HISTORY_SIZE = 10;

  private final ArtifactStagingService staging;
  private final Endpoints.ApiServiceDescriptor stagingEndpoint;
  private final JobInvoker invoker;
  private final int historySize;
  private final boolean cleanArtifactsPerJob;

  private final Map<String, JobPreparation> preparations = new ConcurrentHashMap<>();
  private final Map<String, JobInvocation> invocations = new ConcurrentHashMap<>();
  /** Ids of finished invocations, oldest first; guarded by itself. */
  private final Deque<String> finished = new ArrayDeque<>();

  private InMemoryJobService(
      ArtifactStagingService staging,
      Endpoints.ApiServiceDescriptor stagingEndpoint,
      JobInvoker invoker,
      int historySize,
      boolean cleanArtifactsPerJob) {
    if (historySize < 0) {
      throw new IllegalArgumentException("historySize must be >= 0, got " + historySize);
    }
    this.staging = staging;
    this.stagingEndpoint = stagingEndpoint;
    this.invoker = invoker;
    this.historySize = historySize;
    this.cleanArtifactsPerJob = cleanArtifactsPerJob;
  }

  /**
   * @param staging the artifact staging service clients upload to
   * @param stagingEndpoint where clients reach {@code staging}
   * @param cleanArtifactsPerJob remove a job's staged artifacts when it finishes
   */
  public static InMemoryJobService create(
      ArtifactStagingService staging,
      Endpoints.ApiServiceDescriptor stagingEndpoint,
      JobInvoker invoker,
      int historySize,
      boolean cleanArtifactsPerJob) {
    return new InMemoryJobService(
        staging, stagingEndpoint, invoker, historySize, cleanArtifactsPerJob);
  }

  @Override
  public void prepare(
      JobApi.PrepareJobRequest request, StreamObserver<JobApi.PrepareJobResponse> response) {
    answer(
        response,
        () -> {
          String id = request.getJobName() + "_" + UUID.randomUUID();
          RunnerApi.Pipeline pipeline = request.getPipeline();
          preparations.put(id, new JobPreparation(id, pipeline, request.getPipelineOptions()));
          // Tell the staging service which artifacts each environment needs for this token.
          staging.registerJob(
              id,
              Maps.transformValues(
                  pipeline.getComponents().getEnvironmentsMap(),
                  RunnerApi.Environment::getDependenciesList));
          LOG.info("Prepared job {}", id);
          return JobApi.PrepareJobResponse.newBuilder()
              .setPreparationId(id)
              .setArtifactStagingEndpoint(stagingEndpoint)
              .setStagingSessionToken(id)
              .build();
        });
  }

  @Override
  public void run(JobApi.RunJobRequest request, StreamObserver<JobApi.RunJobResponse> response) {
    answer(
        response,
        () -> {
          String preparationId = request.getPreparationId();
          JobPreparation preparation = preparations.remove(preparationId);
          if (preparation == null) {
            throw notFound("preparation", preparationId);
          }
          try {
            PipelineValidator.validate(preparation.pipeline());
          } catch (RuntimeException e) {
            throw Status.INVALID_ARGUMENT
                .withDescription("Invalid pipeline: " + e.getMessage())
                .withCause(e)
                .asRuntimeException();
          }
          JobInvocation invocation;
          try {
            RunnerApi.Pipeline pipeline =
                withStagedArtifacts(
                    preparation.pipeline(), staging.getStagedArtifacts(preparationId));
            invocation =
                invoker.invoke(pipeline, preparation.options(), request.getRetrievalToken());
          } catch (Exception e) {
            removeArtifacts(preparationId, preparationId);
            throw e;
          }
          String jobId = invocation.getId();
          invocations.put(jobId, invocation);
          invocation.addStateListener(
              event -> {
                if (JobInvocation.isTerminated(event.getState())) {
                  onFinished(jobId, preparationId);
                }
              });
          invocation.start();
          return JobApi.RunJobResponse.newBuilder().setJobId(jobId).build();
        });
  }

  /** Replaces each environment's declared dependencies by the artifacts actually staged. */
  static RunnerApi.Pipeline withStagedArtifacts(
      RunnerApi.Pipeline pipeline,
      @Nullable Map<String, List<RunnerApi.ArtifactInformation>> staged) {
    RunnerApi.Pipeline.Builder builder = pipeline.toBuilder();
    RunnerApi.Components.Builder components = builder.getComponentsBuilder();
    for (Map.Entry<String, RunnerApi.Environment> entry :
        pipeline.getComponents().getEnvironmentsMap().entrySet()) {
      RunnerApi.Environment env = entry.getValue();
      if (env.getDependenciesCount() == 0) {
        continue;
      }
      List<RunnerApi.ArtifactInformation> artifacts =
          staged == null ? null : staged.get(entry.getKey());
      if (artifacts == null) {
        throw Status.FAILED_PRECONDITION
            .withDescription("Artifacts of environment " + entry.getKey() + " were not staged.")
            .asRuntimeException();
      }
      components.putEnvironments(
          entry.getKey(), env.toBuilder().clearDependencies().addAllDependencies(artifacts).build());
    }
    return builder.build();
  }

  private void onFinished(String jobId, String stagingToken) {
    removeArtifacts(jobId, stagingToken);
    synchronized (finished) {
      finished.addLast(jobId);
      while (finished.size() > historySize) {
        invocations.remove(finished.removeFirst());
      }
    }
  }

  private void removeArtifacts(String jobId, String stagingToken) {
    if (!cleanArtifactsPerJob) {
      return;
    }
    try {
      staging.removeStagedArtifacts(stagingToken);
    } catch (Exception e) {
      LOG.warn("Could not remove the staged artifacts of job {}", jobId, e);
    }
  }

  @Override
  public void getJobs(JobApi.GetJobsRequest request, StreamObserver<JobApi.GetJobsResponse> response) {
    answer(
        response,
        () -> {
          JobApi.GetJobsResponse.Builder jobs = JobApi.GetJobsResponse.newBuilder();
          invocations.values().forEach(invocation -> jobs.addJobInfo(invocation.toProto()));
          return jobs.build();
        });
  }

  @Override
  public void getState(JobApi.GetJobStateRequest request, StreamObserver<JobStateEvent> response) {
    answer(response, () -> invocation(request.getJobId()).getStateEvent());
  }

  @Override
  public void getPipeline(
      JobApi.GetJobPipelineRequest request,
      StreamObserver<JobApi.GetJobPipelineResponse> response) {
    answer(
        response,
        () ->
            JobApi.GetJobPipelineResponse.newBuilder()
                .setPipeline(invocation(request.getJobId()).getPipeline())
                .build());
  }

  @Override
  public void cancel(
      JobApi.CancelJobRequest request, StreamObserver<JobApi.CancelJobResponse> response) {
    answer(
        response,
        () -> {
          JobInvocation invocation = invocation(request.getJobId());
          invocation.cancel();
          return JobApi.CancelJobResponse.newBuilder().setState(invocation.getState()).build();
        });
  }

  @Override
  public void getJobMetrics(
      JobApi.GetJobMetricsRequest request,
      StreamObserver<JobApi.GetJobMetricsResponse> response) {
    answer(
        response,
        () ->
            JobApi.GetJobMetricsResponse.newBuilder()
                .setMetrics(invocation(request.getJobId()).getMetrics())
                .build());
  }

  @Override
  public void describePipelineOptions(
      JobApi.DescribePipelineOptionsRequest request,
      StreamObserver<JobApi.DescribePipelineOptionsResponse> response) {
    answer(
        response,
        () ->
            JobApi.DescribePipelineOptionsResponse.newBuilder()
                .addAllOptions(
                    PipelineOptionsFactory.describe(PipelineOptionsFactory.getRegisteredOptions()))
                .build());
  }

  /** Streams every state of the job, history first; completes after a terminal state. */
  @Override
  public void getStateStream(
      JobApi.GetJobStateRequest request, StreamObserver<JobStateEvent> response) {
    JobInvocation invocation = invocationOrError(request.getJobId(), response);
    if (invocation == null) {
      return;
    }
    StreamObserver<JobStateEvent> out = SynchronizedStreamObserver.wrapping(response);
    invocation.addStateListener(
        event -> {
          out.onNext(event);
          if (JobInvocation.isTerminated(event.getState())) {
            out.onCompleted();
          }
        });
  }

  /**
   * Streams the job's messages and states. Messages are subscribed first so that, since the
   * terminal state is always set after the job's last message, completing on it loses nothing.
   */
  @Override
  public void getMessageStream(
      JobApi.JobMessagesRequest request, StreamObserver<JobMessagesResponse> response) {
    JobInvocation invocation = invocationOrError(request.getJobId(), response);
    if (invocation == null) {
      return;
    }
    StreamObserver<JobMessagesResponse> out = SynchronizedStreamObserver.wrapping(response);
    Consumer<JobApi.JobMessage> onMessage =
        message -> out.onNext(JobMessagesResponse.newBuilder().setMessageResponse(message).build());
    Consumer<JobStateEvent> onState =
        event -> {
          out.onNext(JobMessagesResponse.newBuilder().setStateResponse(event).build());
          if (JobInvocation.isTerminated(event.getState())) {
            out.onCompleted();
          }
        };
    synchronized (invocation) {
      // Atomically: no message or state can slip between the two subscriptions.
      invocation.addMessageListener(onMessage);
      invocation.addStateListener(onState);
    }
  }

  @Override
  public void close() {
    for (JobInvocation invocation : invocations.values()) {
      if (!JobInvocation.isTerminated(invocation.getState())) {
        LOG.warn("Job service closing while job {} is {}", invocation.getId(), invocation.getState());
      }
    }
  }

  private JobInvocation invocation(String jobId) throws StatusException {
    JobInvocation invocation = invocations.get(jobId);
    if (invocation == null) {
      throw notFound("job", jobId).getStatus().asException();
    }
    return invocation;
  }

  /**
   * The job, or null after answering the stream with NOT_FOUND (the Python SDK first asks with
   * the preparation id and expects exactly that).
   */
  private JobInvocation invocationOrError(String jobId, StreamObserver<?> response) {
    try {
      return invocation(jobId);
    } catch (StatusException e) {
      response.onError(e);
      return null;
    }
  }

  private static StatusRuntimeException notFound(String what, String id) {
    return Status.NOT_FOUND.withDescription("Unknown " + what + " id " + id).asRuntimeException();
  }

  /** A unary call's body; may throw a gRPC status or any exception. */
  private interface Call<T> {
    T get() throws Exception;
  }

  /** Runs a unary call and sends its result, or its error as a gRPC status. */
  private static <T> void answer(StreamObserver<T> response, Call<T> call) {
    T result;
    try {
      result = call.get();
    } catch (StatusException | StatusRuntimeException e) {
      LOG.warn("Job API call failed: {}", e.getMessage());
      response.onError(e);
      return;
    } catch (Exception e) {
      LOG.error("Job API call failed", e);
      response.onError(
          Status.INTERNAL.withDescription(e.toString()).withCause(e).asRuntimeException());
      return;
    }
    response.onNext(result);
    response.onCompleted();
  }
}
